//! Interoperability with the official Java implementations, each run as users run them: the
//! Java KCL 3.x (`interop.KclApp`, a logging record processor on the KCL's `Scheduler`), the KPL
//! (`interop.KplProducer`: the KPL's Java library and its native daemon, over HTTPS to
//! kinesis-mock's TLS port) and DynamoDB Local for the lease table. Versions are pinned in
//! `interop/java/pom.xml`.
//!
//! These tests need Java 17+ and the Maven build of `interop/java`, so plain `cargo test` lists
//! them as ignored; `scripts/interop.sh` builds the Java side and runs them with `--ignored`.
//! Run that way without the build, they fail naming what is missing.
//!
//! What they show:
//! - records the KPL aggregated are read one by one by this consumer, at the same
//!   (sequence number, sub-sequence number) positions as the Java KCL reads them;
//! - a Java KCL application stopped dead right after checkpointing inside KPL aggregates (at
//!   sub-sequence 0 of one, in the middle of another) is resumed by this consumer on the same
//!   lease table from exactly those positions: nothing lost, repeated only what the Java
//!   application processed after its last checkpoint; the KCL 3.x's other entities in the
//!   table (leader lock, worker metrics, migration state), its `leaseOwner` index and extra
//!   attributes neither count as leases nor get written;
//! - the other way round, a Java KCL application resumes from this consumer's checkpoints and
//!   reads the records this producer aggregated one by one, at the positions the producer
//!   reported;
//! - this producer aggregating while the stream is split twice under load, then read by a Java
//!   KCL application that knows the child shards before reading them (and so skips every
//!   aggregate stored on a shard some member does not hash to): every acknowledged record is
//!   processed exactly once, where the producer said it put it; none is lost;
//! - this consumer's worker-metrics item, read by the KCL's own data access classes from the
//!   lease table and from a 3.0-3.4 application's `-WorkerMetricStats` table, is valid, fresh
//!   and not failing by the KCL's own rules (while an item without an operating range, written
//!   by the test, is not): a Java KCL 3.x leader counts this consumer's workers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_common::message::DataMessage;
use serde_json::Value;
use testkit::{field, Emulator, Kind, ServiceProcess};

const FAILOVER_MS: &str = "3000";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn consumer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_consumer"))
}

fn producer_bin() -> PathBuf {
    testkit::sibling_binary(env!("CARGO_BIN_EXE_consumer"), "producer")
}

/// kinesis-mock with its TLS port known (the KPL speaks HTTPS only), shared by the tests.
fn kinesis() -> &'static (Emulator, u16) {
    static KINESIS: OnceLock<(Emulator, u16)> = OnceLock::new();
    KINESIS.get_or_init(|| {
        let tls_port = testkit::free_port();
        let emulator = Emulator::start_on(
            Kind::KinesisMock,
            testkit::free_port(),
            &[("KINESIS_MOCK_TLS_PORT", &tls_port.to_string())],
        );
        (emulator, tls_port)
    })
}

fn dynamo() -> &'static Emulator {
    testkit::shared(Kind::DynamoDbLocal)
}

/// `java -cp <module>/target/lib/* <class>`, as built by `scripts/interop.sh`.
fn java(module: &str, class: &str, env: &[(String, String)]) -> ServiceProcess {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../interop/java")
        .join(module)
        .join("target/lib");
    assert!(
        lib.is_dir(),
        "{} is missing: run scripts/interop.sh (needs Java 17+ and Maven)",
        lib.display()
    );
    let class_path = format!("{}/*", lib.display());
    ServiceProcess::spawn_with_args(
        Path::new("java"),
        &["-Xmx512m", "-cp", &class_path, class],
        env,
    )
}

/// SIGTERM to the Java KCL application: the KCL's graceful shutdown runs in a shutdown hook,
/// then the JVM exits with 143 (128 + SIGTERM), as every JVM stopped by SIGTERM does.
fn stop_java(process: &mut ServiceProcess) {
    process.signal("TERM");
    process.expect_exit(Duration::from_secs(30), 143);
    let stopped = process.events("stopped");
    assert_eq!(
        stopped.first().map(|e| &e["graceful"]),
        Some(&Value::Bool(true)),
        "{}",
        process.dump()
    );
}

/// [`stop_java`] for a Java worker that may hold no lease when it is stopped: such a worker may
/// exit 0 rather than 143 (its scheduler can finish before the JVM's own exit code is set), and
/// its shutdown hook still reports a graceful stop.
fn stop_java_holding_any(process: &mut ServiceProcess) {
    process.signal("TERM");
    let code = process
        .wait_exit(Duration::from_secs(30))
        .and_then(|s| s.code());
    assert!(
        matches!(code, Some(0 | 143)),
        "exit {code:?}: {}",
        process.dump()
    );
    let stopped = process.events("stopped");
    assert_eq!(
        stopped.first().map(|e| &e["graceful"]),
        Some(&Value::Bool(true)),
        "{}",
        process.dump()
    );
}

fn aws_env() -> Vec<(String, String)> {
    [
        ("AWS_REGION", testkit::TEST_REGION),
        ("AWS_ACCESS_KEY_ID", testkit::TEST_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec()
}

/// The Java KCL application on `app`'s lease table.
fn kcl_app(stream: &str, app: &str, worker: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    let mut env = aws_env();
    env.extend(
        [
            ("STREAM_NAME", stream),
            ("APPLICATION_NAME", app),
            ("WORKER_ID", worker),
            ("KINESIS_ENDPOINT", &kinesis().0.endpoint()),
            ("DYNAMODB_ENDPOINT", &dynamo().endpoint()),
            ("FAILOVER_MS", FAILOVER_MS),
            ("IDLE_MS", "200"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    java("kcl-app", "interop.KclApp", &env)
}

/// This project's consumer, leased, on `app`'s lease table.
fn our_consumer(stream: &str, app: &str, worker: &str) -> ServiceProcess {
    let mut env =
        testkit::service_env_with_dynamo(&kinesis().0.endpoint(), &dynamo().endpoint(), stream);
    env.extend(
        [
            ("CONSUMER_MODE", "leased"),
            ("CONSUMER_APPLICATION_NAME", app),
            ("CONSUMER_WORKER_ID", worker),
            ("CONSUMER_FAILOVER_MS", FAILOVER_MS),
            ("CONSUMER_POLL_INTERVAL_MS", "200"),
            ("CONSUMER_SHARD_SYNC_MS", "1000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    ServiceProcess::spawn(consumer_bin(), &env)
}

/// A user record as a consumer logged it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Position {
    shard: String,
    sequence_number: String,
    sub_sequence_number: u64,
}

fn position(event: &Value) -> Position {
    Position {
        shard: event["shard_id"].as_str().unwrap_or_default().to_string(),
        sequence_number: event["sequence_number"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        sub_sequence_number: event["sub_sequence_number"].as_u64().unwrap_or(0),
    }
}

/// (message id, position) of every `record received` line of the Java KCL application, in
/// order; the id is read from the DataMessage in `data`.
fn java_received(process: &ServiceProcess) -> Vec<(String, Position)> {
    process
        .events("record received")
        .iter()
        .map(|e| {
            let data = e["data"].as_str().unwrap_or_default();
            let message = DataMessage::from_json(data.as_bytes())
                .unwrap_or_else(|err| panic!("not a DataMessage: {data:?}: {err}"));
            (message.id.to_string(), position(e))
        })
        .collect()
}

/// The same for this consumer, which logs the id itself.
fn ours_received(process: &ServiceProcess) -> Vec<(String, Position)> {
    process
        .events("record received")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_string(),
                position(e),
            )
        })
        .collect()
}

fn ids(received: &[(String, Position)]) -> HashSet<String> {
    received.iter().map(|(id, _)| id.clone()).collect()
}

fn s(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

async fn items(app: &str) -> Vec<HashMap<String, AttributeValue>> {
    dynamo()
        .dynamodb()
        .scan()
        .table_name(app)
        .consistent_read(true)
        .send()
        .await
        .expect("Scan")
        .items()
        .to_vec()
}

fn save_logs(test: &str, processes: &[&ServiceProcess]) -> String {
    let path = std::env::temp_dir().join(testkit::unique_name(&format!("interop-{test}")));
    let text: String = processes
        .iter()
        .map(|p| {
            format!(
                "=== {} (pid {}) stdout\n{}\n=== stderr\n{}\n",
                p.name,
                p.pid(),
                p.lines().join("\n"),
                p.stderr_lines().join("\n")
            )
        })
        .collect();
    let _ = std::fs::write(&path, text);
    format!("logs in {}", path.display())
}

/// Puts `count` DataMessages through the KPL (aggregating) and returns every id it reported
/// sent, its warm-up messages included.
fn kpl_put(stream: &str, count: usize) -> HashSet<String> {
    let mut env = aws_env();
    let port = kinesis().1.to_string();
    let count = count.to_string();
    env.extend(
        [
            ("STREAM_NAME", stream),
            ("COUNT", &count),
            ("KINESIS_HOST", "127.0.0.1"),
            ("KINESIS_PORT", &port),
            ("LOG_RECORDS", "true"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut kpl = java("kpl-producer", "interop.KplProducer", &env);
    kpl.expect_exit(Duration::from_secs(120), 0);
    field(&kpl.events("record sent"), "id")
        .into_iter()
        .collect()
}

/// Reads the whole stream with a Java KCL application of its own, until it has every id in
/// `expected`; returns what it read, per shard in order.
async fn read_with_java_kcl(
    stream: &str,
    expected: &HashSet<String>,
) -> BTreeMap<String, Vec<(String, Position)>> {
    let app = testkit::unique_name("interop-reader");
    let mut reader = kcl_app(stream, &app, "java-reader", &[]);
    let all = testkit::eventually(Duration::from_secs(120), || {
        ids(&java_received(&reader)).is_superset(expected)
    })
    .await;
    assert!(all, "{}", save_logs("reader", &[&reader]));
    stop_java(&mut reader);
    let mut by_shard: BTreeMap<String, Vec<(String, Position)>> = BTreeMap::new();
    for (id, at) in java_received(&reader) {
        by_shard.entry(at.shard.clone()).or_default().push((id, at));
    }
    by_shard
}

/// In one shard's records, a position inside an aggregate of at least three user records that
/// is followed by at least one more Kinesis record, at user record `pick(len)` of it.
fn inside_an_aggregate(records: &[(String, Position)], pick: fn(usize) -> usize) -> Position {
    let mut order: Vec<&str> = Vec::new();
    let mut sizes: HashMap<&str, usize> = HashMap::new();
    for (_, at) in records {
        let seq = at.sequence_number.as_str();
        if !sizes.contains_key(seq) {
            order.push(seq);
        }
        *sizes.entry(seq).or_default() += 1;
    }
    let seq = order[..order.len().saturating_sub(1)]
        .iter()
        .find(|seq| sizes[**seq] >= 3)
        .unwrap_or_else(|| panic!("no aggregate of 3+ records before the last one: {sizes:?}"));
    Position {
        shard: records[0].1.shard.clone(),
        sequence_number: seq.to_string(),
        sub_sequence_number: pick(sizes[seq]) as u64,
    }
}

/// KPL aggregates -> the Java KCL, stopped dead after checkpoints inside aggregates -> this
/// consumer on the same lease table.
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn our_consumer_resumes_a_java_kcl_application_inside_kpl_aggregates() {
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    let stream = testkit::unique_name("kpl-to-kcl");
    testkit::create_stream(&client, &stream, 2).await;
    let sent = kpl_put(&stream, 1000);
    let stored = testkit::read_stream(&client, &stream).await;
    assert!(
        stored.len() < 40,
        "the KPL aggregated {} messages into {} Kinesis records",
        sent.len(),
        stored.len()
    );

    // How the Java KCL unpacks the stream: the reference for every position below.
    let layout = read_with_java_kcl(&stream, &sent).await;
    assert_eq!(layout.len(), 2, "records on both shards");
    let mut shards = layout.keys();
    let (first, second) = (shards.next().unwrap(), shards.next().unwrap());
    // The first user record of an aggregate on one shard, the middle of one on the other.
    let stops = [
        inside_an_aggregate(&layout[first], |_| 0),
        inside_an_aggregate(&layout[second], |len| len / 2),
    ];
    let stop_at = stops
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}",
                p.shard, p.sequence_number, p.sub_sequence_number
            )
        })
        .collect::<Vec<_>>()
        .join(",");

    // The Java application: one Kinesis record (one aggregate) a batch, checkpointing after
    // each; at the stop positions it checkpoints exactly there, processes the rest of that
    // aggregate without checkpointing, then halts with its leases still owned.
    let app = testkit::unique_name("interop-app");
    let mut java_app = kcl_app(
        &stream,
        &app,
        "java-worker",
        &[("MAX_RECORDS", "1"), ("STOP_AT", &stop_at)],
    );
    java_app.expect_exit(Duration::from_secs(120), 0);
    assert_eq!(java_app.events("halted").len(), 1, "{}", java_app.dump());
    let java_read = java_received(&java_app);
    for stop in &stops {
        let last = java_app
            .events("checkpoint")
            .into_iter()
            .rfind(|e| e["shard_id"].as_str() == Some(stop.shard.as_str()))
            .map(|e| position(&e));
        assert_eq!(last.as_ref(), Some(stop), "{}", java_app.dump());
    }

    // What the Java KCL 3.x left in the table: its checkpoints, and its own entities.
    let table = items(&app).await;
    let kinds: HashSet<String> = table.iter().filter_map(|i| s(i, "entityType")).collect();
    for kind in [
        "LEASE",
        "LEADER",
        "WORKER_METRIC_STATS",
        "CLIENT_VERSION_MIGRATION",
    ] {
        assert!(kinds.contains(kind), "no {kind} item in {table:?}");
    }
    for stop in &stops {
        let lease = table
            .iter()
            .find(|i| s(i, "leaseKey").as_deref() == Some(stop.shard.as_str()))
            .expect("lease of the shard");
        assert_eq!(
            s(lease, "checkpoint").as_deref(),
            Some(stop.sequence_number.as_str())
        );
        assert_eq!(
            lease["checkpointSubSequenceNumber"].as_n().ok(),
            Some(&stop.sub_sequence_number.to_string())
        );
        assert_eq!(s(lease, "leaseOwner").as_deref(), Some("java-worker"));
    }
    let description = dynamo()
        .dynamodb()
        .describe_table()
        .table_name(&app)
        .send()
        .await
        .expect("DescribeTable");
    let indexes: Vec<&str> = description
        .table()
        .map(|t| t.global_secondary_indexes())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.index_name())
        .collect();
    assert_eq!(indexes, ["LeaseOwnerToLeaseKeyIndex"]);
    // A graceful handoff the KCL 3.x leader had started when every Java worker died: the lease
    // assigned to a new owner, `checkpointOwner` naming the old one (written here the way the
    // leader writes it).
    dynamo()
        .dynamodb()
        .update_item()
        .table_name(&app)
        .key("leaseKey", AttributeValue::S(stops[1].shard.clone()))
        .update_expression("SET leaseOwner = :new, checkpointOwner = :old")
        .condition_expression("leaseOwner = :old")
        .expression_attribute_values(":new", AttributeValue::S("java-worker-b".into()))
        .expression_attribute_values(":old", AttributeValue::S("java-worker".into()))
        .send()
        .await
        .expect("UpdateItem");
    let before = items(&app).await;
    let others_before: Vec<_> = before
        .iter()
        .filter(|i| s(i, "entityType").as_deref() != Some("LEASE"))
        .cloned()
        .collect();
    assert!(others_before
        .iter()
        .all(|i| s(i, "leaseKey").as_deref() != Some("rust-worker")));
    // The attributes this consumer never writes, per lease: the KCL 3.x's `entityType` and the
    // shard's own (`throughputKBps` it writes with its renewals, as the KCL does).
    let ours_to_write = [
        "throughputKBps",
        "leaseOwner",
        "leaseCounter",
        "checkpoint",
        "checkpointSubSequenceNumber",
        "ownerSwitchesSinceCheckpoint",
        "checkpointOwner",
        "pendingCheckpoint",
        "pendingCheckpointSubSequenceNumber",
        "pendingCheckpointState",
        "childShardIds",
        "kinesisStreamName",
        "latestStartTimestamp",
        "handedOverBy",
    ];
    let kcl_only = |item: &HashMap<String, AttributeValue>| -> BTreeMap<String, AttributeValue> {
        item.iter()
            .filter(|(k, _)| !ours_to_write.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let leases_before: BTreeMap<String, BTreeMap<String, AttributeValue>> = before
        .iter()
        .filter(|i| s(i, "entityType").as_deref() == Some("LEASE"))
        .map(|i| (s(i, "leaseKey").unwrap_or_default(), kcl_only(i)))
        .collect();

    // This consumer on the same table.
    let mut ours = our_consumer(&stream, &app, "rust-worker");
    let mut expected: HashSet<String> = HashSet::new();
    for stop in &stops {
        let records = &layout[&stop.shard];
        expected.extend(
            records
                .iter()
                .filter(|(_, at)| at > stop)
                .map(|(id, _)| id.clone()),
        );
    }
    let done = testkit::eventually(Duration::from_secs(60), || {
        ids(&ours_received(&ours)).is_superset(&expected)
    })
    .await;
    if !done {
        let got = ids(&ours_received(&ours));
        let missing: Vec<&Position> = layout
            .values()
            .flatten()
            .filter(|(id, _)| expected.contains(id) && !got.contains(id))
            .map(|(_, at)| at)
            .collect();
        panic!(
            "after the Java checkpoints at {stop_at}, ours never read {} of {} records, the first \
             at {:?}; {}",
            missing.len(),
            expected.len(),
            missing.first(),
            save_logs("resume", &[&java_app, &ours])
        );
    }
    ours.stop();
    let ours_read = ours_received(&ours);

    // Resumed exactly after each checkpoint, at the positions the Java KCL reads.
    let reference: HashMap<&str, &Position> = layout
        .values()
        .flatten()
        .map(|(id, at)| (id.as_str(), at))
        .collect();
    for (id, at) in &ours_read {
        assert_eq!(Some(&at), reference.get(id.as_str()), "position of {id}");
    }
    for stop in &stops {
        let on_shard: Vec<&Position> = ours_read
            .iter()
            .map(|(_, at)| at)
            .filter(|at| at.shard == stop.shard)
            .collect();
        let next = layout[&stop.shard]
            .iter()
            .map(|(_, at)| at)
            .find(|at| *at > stop);
        assert_eq!(
            on_shard.first().copied(),
            next,
            "first record after {stop:?}"
        );
    }
    assert_eq!(ids(&ours_read), expected);
    assert_eq!(ours_read.len(), expected.len(), "ours read a record twice");
    // Nothing lost; repeated only what the Java application processed after its checkpoint.
    let everything: HashSet<String> = ids(&java_read).union(&ids(&ours_read)).cloned().collect();
    assert_eq!(everything, sent);
    let repeated: HashSet<String> = ids(&java_read)
        .intersection(&ids(&ours_read))
        .cloned()
        .collect();
    let uncheckpointed: HashSet<String> = java_read
        .iter()
        .filter(|(_, at)| stops.iter().any(|stop| at.shard == stop.shard && at > stop))
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(repeated, uncheckpointed);
    eprintln!(
        "KPL sent {}; Java KCL read {} and stopped at {stop_at}; ours read {} ({} repeated)",
        sent.len(),
        java_read.len(),
        ours_read.len(),
        repeated.len()
    );

    // The KCL's other entities were neither counted as leases nor written.
    let acquired = ours.events("lease acquired");
    let taken: HashSet<String> = field(&acquired, "shard_id").into_iter().collect();
    assert_eq!(taken, stops.iter().map(|p| p.shard.clone()).collect());
    for event in &acquired {
        assert_eq!(event["target_leases"], 2, "{event}");
        assert_eq!(event["workers"], 1, "{event}");
    }
    assert!(ours.events("unreadable lease item skipped").is_empty());
    let after = items(&app).await;
    // ...but for this worker's own worker-metrics item.
    let (own, others_after): (Vec<_>, Vec<_>) = after
        .iter()
        .filter(|i| s(i, "entityType").as_deref() != Some("LEASE"))
        .cloned()
        .partition(|i| s(i, "leaseKey").as_deref() == Some("rust-worker"));
    assert_eq!(others_after, others_before);
    assert_eq!(
        own.iter().map(|i| s(i, "entityType")).collect::<Vec<_>>(),
        [Some("WORKER_METRIC_STATS".to_string())],
        "{own:?}"
    );
    let leases_after: Vec<_> = after
        .iter()
        .filter(|i| s(i, "entityType").as_deref() == Some("LEASE"))
        .collect();
    assert_eq!(leases_after.len(), 2);
    for lease in leases_after {
        let key = s(lease, "leaseKey").unwrap_or_default();
        assert_eq!(kcl_only(lease), leases_before[&key], "kept");
        assert!(!lease.contains_key("checkpointOwner"), "{lease:?}");
        assert!(!lease.contains_key("leaseOwner"), "released: {lease:?}");
    }
}

/// This producer's aggregates -> this consumer, stopped -> the Java KCL on the same table.
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn a_java_kcl_application_resumes_from_our_checkpoints_and_unpacks_our_aggregates() {
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    let stream = testkit::unique_name("ours-to-kcl");
    testkit::create_stream(&client, &stream, 2).await;
    let produce = |count: &str| {
        let mut producer = ServiceProcess::spawn(
            &producer_bin(),
            &testkit::env_with(
                &kinesis().0.endpoint(),
                &stream,
                &[
                    ("PRODUCER_COUNT", count),
                    ("PRODUCER_INTERVAL_MS", "20"),
                    ("PRODUCER_MESSAGES_PER_TICK", "10"),
                    ("PRODUCER_AGGREGATION", "true"),
                    ("PRODUCER_LINGER_MS", "50"),
                ],
            ),
        );
        producer.expect_exit(Duration::from_secs(60), 0);
        producer.events("record sent")
    };

    let app = testkit::unique_name("interop-app");
    let first = produce("200");
    let first_ids: HashSet<String> = field(&first, "id").into_iter().collect();
    let mut ours = our_consumer(&stream, &app, "rust-worker");
    let read = testkit::eventually(Duration::from_secs(60), || {
        ids(&ours_received(&ours)) == first_ids
    })
    .await;
    assert!(read, "{}", ours.dump());
    ours.stop();
    let our_checkpoints: HashMap<String, (String, u64)> = ours
        .events("checkpoint")
        .iter()
        .map(|e| {
            let at = position(e);
            (at.shard, (at.sequence_number, at.sub_sequence_number))
        })
        .collect();
    assert!(
        our_checkpoints.values().any(|(_, sub)| *sub > 0),
        "a checkpoint inside an aggregate: {our_checkpoints:?}"
    );

    let second = produce("200");
    let aggregated = second
        .iter()
        .filter(|e| e["sub_sequence_number"].is_u64())
        .count();
    assert!(aggregated >= 180, "{aggregated} of 200 aggregated");
    let second_ids: HashSet<String> = field(&second, "id").into_iter().collect();
    let mut java_app = kcl_app(&stream, &app, "java-worker", &[]);
    let read = testkit::eventually(Duration::from_secs(120), || {
        ids(&java_received(&java_app)).is_superset(&second_ids)
    })
    .await;
    assert!(read, "{}", save_logs("to-java", &[&ours, &java_app]));
    stop_java(&mut java_app);
    let java_read = java_received(&java_app);

    // Started at our checkpoints, read nothing of the first batch and nothing twice.
    for event in java_app.events("initialized") {
        let shard = event["shard_id"].as_str().unwrap_or_default();
        let (seq, sub) = &our_checkpoints[shard];
        assert_eq!(event["checkpoint"].as_str(), Some(seq.as_str()), "{event}");
        assert_eq!(event["sub_sequence_number"].as_u64(), Some(*sub), "{event}");
    }
    assert_eq!(ids(&java_read), second_ids);
    assert_eq!(java_read.len(), second_ids.len(), "the Java KCL read twice");
    // Each user record where our producer said it put it.
    let reported: HashMap<String, Position> = second
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_string(),
                position(e),
            )
        })
        .collect();
    for (id, at) in &java_read {
        assert_eq!(Some(at), reported.get(id), "position of {id}");
    }
    let unpacked = java_app
        .events("record received")
        .iter()
        .filter(|e| e["aggregated"] == true)
        .count();
    assert_eq!(unpacked, aggregated, "the KCL unpacked our aggregates");
    eprintln!(
        "ours read {} and checkpointed at {our_checkpoints:?}; the Java KCL read {} \
         ({unpacked} from aggregates)",
        first_ids.len(),
        java_read.len()
    );
}

/// Members stored in aggregates of which some member hashes outside the range of the shard
/// the aggregate is stored on: the copies the Java KCL skips (with the whole aggregate).
async fn misplaced_members(client: &aws_sdk_kinesis::Client, stream: &str) -> usize {
    let ranges = testkit::shard_ranges(client, stream).await;
    let mut misplaced = 0;
    for (shard, record) in testkit::read_stream(client, stream).await {
        let Some(aggregate) = kinesis_common::kpl::deaggregate(record.data().as_ref()) else {
            continue;
        };
        if kinesis_common::kpl::is_misplaced(Some(ranges[&shard]), &aggregate) {
            misplaced += aggregate.len();
        }
    }
    misplaced
}

/// This producer aggregating while the stream is split twice under load, then a Java KCL
/// application that knows the children before it reads them (its lease table existed before
/// the splits; it is started after them): it skips every aggregate stored on a shard some
/// member does not hash to, so any record acknowledged inside one would be lost. Every record
/// acknowledged is processed by the Java KCL exactly once, at the position the producer
/// reported.
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn a_java_kcl_application_started_after_splits_under_load_processes_every_record_our_producer_acknowledged(
) {
    const COUNT: usize = 4000;
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    let stream = testkit::unique_name("split-to-kcl");
    testkit::create_stream(&client, &stream, 2).await;

    // The lease table, with the two parents' leases, before the splits: on a fresh table the
    // KCL refuses kinesis-mock's listing of a resharded stream ("Incomplete hash range").
    let app = testkit::unique_name("interop-split");
    let mut first = kcl_app(&stream, &app, "java-before", &[]);
    let leased = testkit::eventually(Duration::from_secs(120), || {
        first.events("initialized").len() >= 2
    })
    .await;
    assert!(leased, "{}", save_logs("split-first", &[&first]));
    stop_java(&mut first);
    let parents = first.field_set("initialized", "shard_id");

    let mut producer = ServiceProcess::spawn(
        &producer_bin(),
        &testkit::env_with(
            &kinesis().0.endpoint(),
            &stream,
            &[
                ("PRODUCER_COUNT", &COUNT.to_string()),
                ("PRODUCER_INTERVAL_MS", "10"),
                ("PRODUCER_MESSAGES_PER_TICK", "10"),
                ("PRODUCER_LINGER_MS", "200"),
                ("PRODUCER_AGGREGATION", "true"),
                ("PRODUCER_RECORD_TTL_MS", "120000"),
            ],
        ),
    );
    for after in [COUNT / 5, COUNT / 2] {
        let flowing = testkit::eventually(Duration::from_secs(120), || {
            producer.events("record sent").len() >= after
        })
        .await;
        assert!(flowing, "{}", producer.dump());
        testkit::split_open_shards(&client, &stream, 1).await;
    }
    producer.expect_exit(Duration::from_secs(180), 0);
    let sent = producer.events("record sent");
    assert_eq!(sent.len(), COUNT, "{}", producer.dump());
    let misplaced = misplaced_members(&client, &stream).await;
    assert!(
        misplaced > 0,
        "no aggregate landed on a shard its members do not all hash to: the splits did not \
         test anything"
    );
    let reported: HashMap<String, Position> = sent
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_string(),
                position(e),
            )
        })
        .collect();
    let acknowledged: HashSet<String> = reported.keys().cloned().collect();

    let mut java_app = kcl_app(&stream, &app, "java-after", &[]);
    let read = testkit::eventually(Duration::from_secs(180), || {
        ids(&java_received(&java_app)).is_superset(&acknowledged)
    })
    .await;
    let logs = save_logs("split-after", &[&producer, &java_app]);
    stop_java(&mut java_app);
    let java_read = java_received(&java_app);
    let lost = acknowledged.difference(&ids(&java_read)).count();
    let mut times_read: HashMap<&str, usize> = HashMap::new();
    let mut elsewhere = 0;
    for (id, at) in &java_read {
        *times_read.entry(id.as_str()).or_default() += 1;
        if reported.get(id) != Some(at) {
            elsewhere += 1;
        }
    }
    let twice = times_read.values().filter(|n| **n > 1).count();
    let children = java_read
        .iter()
        .filter(|(_, at)| !parents.contains(&at.shard))
        .count();
    eprintln!(
        "{COUNT} acknowledged, {misplaced} members stored in misplaced aggregates; the Java KCL \
         read {} ({children} from child shards): {lost} lost, {twice} read twice, {elsewhere} \
         read at another position than acknowledged",
        java_read.len()
    );
    assert!(read, "{logs}");
    assert_eq!(
        (lost, twice, elsewhere),
        (0, 0, 0),
        "(lost, read twice, read elsewhere than acknowledged); {logs}"
    );
    assert!(children > 0, "nothing was read from a child shard: {logs}");
}

// ---------------------------------------------------------------------------------------------
// One application, Java and Rust workers side by side (KCL 3.x leader, worker metrics,
// load-aware assignment). Our workers run `CONSUMER_LEASE_ASSIGNMENT=leader`; both kinds use a
// leader lock of 6 s with a 1 s heartbeat (the KCL defaults, 120 s and 30 s, would make these
// tests minutes long), and the failover time above (3 s): an assignment pass every 6 s.

const LEADER_LEASE_MS: &str = "6000";
const LEADER_HEARTBEAT_MS: &str = "1000";
/// The leader's assignment interval (twice the failover time).
const PASS: Duration = Duration::from_secs(6);

/// Our consumer following (or being) the KCL 3.x leader.
fn our_led_consumer(stream: &str, app: &str, worker: &str) -> ServiceProcess {
    our_led_consumer_with(stream, app, worker, &[])
}

fn our_led_consumer_with(
    stream: &str,
    app: &str,
    worker: &str,
    extra: &[(&str, &str)],
) -> ServiceProcess {
    let mut env =
        testkit::service_env_with_dynamo(&kinesis().0.endpoint(), &dynamo().endpoint(), stream);
    env.extend(
        [
            ("CONSUMER_MODE", "leased"),
            ("CONSUMER_APPLICATION_NAME", app),
            ("CONSUMER_WORKER_ID", worker),
            ("CONSUMER_FAILOVER_MS", FAILOVER_MS),
            ("CONSUMER_POLL_INTERVAL_MS", "200"),
            ("CONSUMER_SHARD_SYNC_MS", "1000"),
            ("CONSUMER_LEASE_ASSIGNMENT", "leader"),
            ("CONSUMER_LEADER_LEASE_DURATION_MS", LEADER_LEASE_MS),
            ("CONSUMER_LEADER_HEARTBEAT_MS", LEADER_HEARTBEAT_MS),
            ("CONSUMER_WORKER_METRICS_INTERVAL_MS", "1500"),
            // The Java KCL publishes CPU only on EC2, ECS or EKS, so here it is a "default"
            // worker, balanced by throughput; a worker publishing CPU is compared on CPU with
            // the workers that publish it only, so a fleet mixing both never rebalances
            // between the two kinds (the KCL's algorithm averages each metric over the workers
            // that have it). Ours publish no CPU either, as a fleet should run here (`kcl`
            // decides the same off AWS; `none` spares each worker the EC2 probe).
            ("CONSUMER_WORKER_CPU_SOURCE", "none"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ServiceProcess::spawn(consumer_bin(), &env)
}

/// The Java KCL application with the same leader-lock timings.
fn java_led(stream: &str, app: &str, worker: &str) -> ServiceProcess {
    kcl_app(
        stream,
        app,
        worker,
        &[
            ("LEADER_LEASE_MS", LEADER_LEASE_MS),
            ("LEADER_HEARTBEAT_MS", LEADER_HEARTBEAT_MS),
        ],
    )
}

/// The table's items; none while the table does not exist yet.
async fn items_if_any(app: &str) -> Vec<HashMap<String, AttributeValue>> {
    dynamo()
        .dynamodb()
        .scan()
        .table_name(app)
        .consistent_read(true)
        .send()
        .await
        .map(|out| out.items().to_vec())
        .unwrap_or_default()
}

/// Who holds the leader lock (in the lease table, or in `<app>-CoordinatorState`).
async fn leader_of(app: &str) -> Option<String> {
    if let Some(item) = items_if_any(app).await.into_iter().find(|i| {
        s(i, "leaseKey").as_deref() == Some("Leader")
            && s(i, "entityType").as_deref() == Some("LEADER")
    }) {
        return s(&item, "ownerName");
    }
    let legacy = dynamo()
        .dynamodb()
        .get_item()
        .table_name(format!("{app}-CoordinatorState"))
        .key("key", AttributeValue::S("Leader".into()))
        .consistent_read(true)
        .send()
        .await
        .ok()?;
    legacy.item().and_then(|i| s(i, "ownerName"))
}

/// Worker id -> the leases (shard ids) it owns, from the lease items only.
async fn lease_owners(app: &str) -> BTreeMap<String, Vec<String>> {
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in items_if_any(app).await {
        let is_lease = s(&item, "entityType").is_none_or(|t| t == "LEASE");
        if let (true, Some(owner), Some(key)) =
            (is_lease, s(&item, "leaseOwner"), s(&item, "leaseKey"))
        {
            owners.entry(owner).or_default().push(key);
        }
    }
    owners
}

/// Waits for an async condition, checked every 200 ms, up to `limit`.
async fn wait_until<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Our producer putting `count` DataMessages at about 50 a second, unaggregated.
fn load(stream: &str, count: usize) -> ServiceProcess {
    ServiceProcess::spawn(
        &producer_bin(),
        &testkit::env_with(
            &kinesis().0.endpoint(),
            stream,
            &[
                ("PRODUCER_COUNT", &count.to_string()),
                ("PRODUCER_INTERVAL_MS", "100"),
                ("PRODUCER_MESSAGES_PER_TICK", "5"),
            ],
        ),
    )
}

/// Every id the producer acknowledged, once it has exited.
fn sent_ids(producer: &mut ServiceProcess) -> HashSet<String> {
    producer.expect_exit(Duration::from_secs(180), 0);
    field(&producer.events("record sent"), "id")
        .into_iter()
        .collect()
}

/// What `process` logged as processed, read as its kind logs it (the Java KCL application or
/// ours).
fn received(process: &ServiceProcess) -> Vec<(String, Position)> {
    if process.name.contains("KclApp") {
        java_received(process)
    } else {
        ours_received(process)
    }
}

/// Waits up to 90 s for `processes` together to have processed every id in `sent`, then
/// asserts they did, saving their logs under `test` if not.
async fn assert_all_processed(sent: &HashSet<String>, processes: &[&ServiceProcess], test: &str) {
    let everyone = || {
        processes
            .iter()
            .flat_map(|p| received(p))
            .map(|(id, _)| id)
            .collect::<HashSet<String>>()
    };
    let all = testkit::eventually(Duration::from_secs(90), || everyone().is_superset(sent)).await;
    let lost = sent.difference(&everyone()).count();
    assert!(
        all,
        "{lost} of {} lost: {}",
        sent.len(),
        save_logs(test, processes)
    );
}

/// Mixed fleet: one Java KCL 3.5 worker and one of ours on one table, 8 shards, under load.
/// Both hold leases within two assignment passes of both being up, whoever leads; every record
/// acknowledged is processed.
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn a_mixed_fleet_shares_one_table_under_one_leader() {
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    let stream = testkit::unique_name("mixed-fleet");
    testkit::create_stream(&client, &stream, 8).await;
    let app = testkit::unique_name("mixed-app");
    let mut producer = load(&stream, 1500);
    let ours = our_led_consumer(&stream, &app, "rust-worker");
    let java = java_led(&stream, &app, "java-worker");
    let both_up = testkit::eventually(Duration::from_secs(60), || {
        !java.events("started").is_empty() && !ours.events("consumer started").is_empty()
    })
    .await;
    assert!(both_up, "{}", save_logs("mixed-start", &[&ours, &java]));
    let up_at = std::time::Instant::now();
    // Worker metrics first (each kind publishes every 1.5 s here), then a pass or two.
    let shared = wait_until(Duration::from_secs(60), || async {
        let owners = lease_owners(&app).await;
        owners.get("rust-worker").is_some_and(|l| !l.is_empty())
            && owners.get("java-worker").is_some_and(|l| !l.is_empty())
    })
    .await;
    let took = up_at.elapsed();
    let leader = leader_of(&app).await;
    let owners = lease_owners(&app).await;
    assert!(
        shared,
        "leases {owners:?}, leader {leader:?}: {}",
        save_logs("mixed-share", &[&ours, &java])
    );
    assert!(
        took <= 2 * PASS + Duration::from_secs(15),
        "both held leases only {took:?} after both were up"
    );
    let sent = sent_ids(&mut producer);
    assert_all_processed(&sent, &[&ours, &java], "mixed-lost").await;
    eprintln!(
        "mixed fleet: leader {leader:?}; both held leases {took:?} after both were up: {:?}; \
         {} records sent, all processed (ours {}, Java {})",
        owners
            .iter()
            .map(|(w, l)| (w, l.len()))
            .collect::<BTreeMap<_, _>>(),
        sent.len(),
        ours_received(&ours).len(),
        java_received(&java).len()
    );
}

/// The `cv` of the application's `Migration3.0` record in the lease table (KCL 3.5), if any.
async fn client_version(app: &str) -> Option<String> {
    items_if_any(app)
        .await
        .into_iter()
        .find(|i| s(i, "leaseKey").as_deref() == Some("Migration3.0"))
        .and_then(|i| s(&i, "cv"))
}

/// A Java KCL 3.5 application upgrading from 2.x (`CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X`):
/// its worker writes `Migration3.0` = `CLIENT_VERSION_UPGRADE_FROM_2X` and takes by lease count,
/// electing no leader by the lock. Ours, in leader mode, reads that record and takes by count
/// too, out of the election: the leases end up two and two, ours never leads, nothing moves for
/// three failover intervals after that (no fight), and every record acknowledged is processed.
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn ours_in_leader_mode_takes_by_count_beside_a_java_fleet_upgrading_from_2x() {
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    let stream = testkit::unique_name("upgrade-2x");
    testkit::create_stream(&client, &stream, 4).await;
    let app = testkit::unique_name("upgrade-2x-app");
    let mut producer = load(&stream, 1000);
    let mut java = kcl_app(
        &stream,
        &app,
        "java-2x",
        &[
            (
                "CLIENT_VERSION_CONFIG",
                "CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X",
            ),
            ("LEADER_LEASE_MS", LEADER_LEASE_MS),
            ("LEADER_HEARTBEAT_MS", LEADER_HEARTBEAT_MS),
        ],
    );
    let java_alone = wait_until(Duration::from_secs(90), || async {
        client_version(&app).await.as_deref() == Some("CLIENT_VERSION_UPGRADE_FROM_2X")
            && lease_owners(&app).await.get("java-2x").map_or(0, Vec::len) == 4
    })
    .await;
    assert!(
        java_alone,
        "cv {:?}, leases {:?}: {}",
        client_version(&app).await,
        lease_owners(&app).await,
        save_logs("upgrade-2x-java", &[&java])
    );
    let mut ours = our_led_consumer(&stream, &app, "rust-2x");
    let two_and_two = wait_until(Duration::from_secs(90), || async {
        let owners = lease_owners(&app).await;
        owners.get("java-2x").map_or(0, Vec::len) == 2
            && owners.get("rust-2x").map_or(0, Vec::len) == 2
    })
    .await;
    assert!(
        two_and_two,
        "{:?}: {}",
        lease_owners(&app).await,
        save_logs("upgrade-2x-share", &[&java, &ours])
    );
    let on_2x = ours.events(
        "the application runs the KCL 2.x algorithms (Migration3.0): taking by lease count, out \
         of the leader election",
    );
    assert_eq!(on_2x.len(), 1, "{}", ours.dump());
    assert_eq!(on_2x[0]["client_version"], "CLIENT_VERSION_UPGRADE_FROM_2X");
    // Settled: no lease moves for three failover intervals.
    let owners = lease_owners(&app).await;
    tokio::time::sleep(3 * Duration::from_millis(FAILOVER_MS.parse().unwrap())).await;
    assert_eq!(
        lease_owners(&app).await,
        owners,
        "{}",
        save_logs("upgrade-2x-moves", &[&java, &ours])
    );
    assert!(
        ours.events("leadership acquired").is_empty(),
        "{}",
        ours.dump()
    );
    let sent = sent_ids(&mut producer);
    assert_all_processed(&sent, &[&java, &ours], "upgrade-2x-lost").await;
    eprintln!(
        "upgrading from 2.x: leases {owners:?}, {} records sent, all processed (ours {}, Java {})",
        sent.len(),
        ours_received(&ours).len(),
        java_received(&java).len()
    );
    ours.stop();
    stop_java(&mut java);
}

/// Leadership moves: the leader is killed (-9), the other kind takes the lock once its version
/// stood for the lock's duration, and goes on assigning: the dead worker's leases end up with
/// the survivor. Both directions: ours leading first, then a Java worker leading.
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn the_other_kind_takes_the_lead_when_the_leader_is_killed() {
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    for ours_first in [true, false] {
        let stream = testkit::unique_name("leader-moves");
        testkit::create_stream(&client, &stream, 4).await;
        let app = testkit::unique_name("leader-app");
        // The first one started leads: the lock is free.
        let (first, second, first_id, second_id) = if ours_first {
            let ours = our_led_consumer(&stream, &app, "rust-worker");
            let led = wait_until(Duration::from_secs(60), || async {
                leader_of(&app).await.as_deref() == Some("rust-worker")
            })
            .await;
            assert!(led, "{}", save_logs("leader-ours", &[&ours]));
            (
                ours,
                java_led(&stream, &app, "java-worker"),
                "rust-worker",
                "java-worker",
            )
        } else {
            let java = java_led(&stream, &app, "java-worker");
            let led = wait_until(Duration::from_secs(90), || async {
                leader_of(&app).await.as_deref() == Some("java-worker")
            })
            .await;
            assert!(led, "{}", save_logs("leader-java", &[&java]));
            (
                java,
                our_led_consumer(&stream, &app, "rust-worker"),
                "java-worker",
                "rust-worker",
            )
        };
        let shared = wait_until(Duration::from_secs(60), || async {
            let owners = lease_owners(&app).await;
            owners.get(first_id).is_some_and(|l| !l.is_empty())
                && owners.get(second_id).is_some_and(|l| !l.is_empty())
        })
        .await;
        assert!(
            shared,
            "{:?}: {}",
            lease_owners(&app).await,
            save_logs("leader-share", &[&first, &second])
        );
        first.signal("KILL");
        let killed_at = std::time::Instant::now();
        let took_lock = wait_until(Duration::from_secs(60), || async {
            leader_of(&app).await.as_deref() == Some(second_id)
        })
        .await;
        let lock_after = killed_at.elapsed();
        assert!(
            took_lock,
            "leader still {:?}: {}",
            leader_of(&app).await,
            save_logs("leader-take", &[&first, &second])
        );
        let all_leases = wait_until(Duration::from_secs(60), || async {
            let owners = lease_owners(&app).await;
            owners.len() == 1 && owners.get(second_id).is_some_and(|l| l.len() == 4)
        })
        .await;
        let leases_after = killed_at.elapsed();
        assert!(
            all_leases,
            "{:?}: {}",
            lease_owners(&app).await,
            save_logs("leader-assign", &[&first, &second])
        );
        eprintln!(
            "{first_id} killed: {second_id} took the lock after {lock_after:?} (lock duration \
             {LEADER_LEASE_MS} ms) and held all 4 leases after {leases_after:?}"
        );
        let mut second = second;
        if ours_first {
            stop_java(&mut second);
        } else {
            second.stop();
        }
    }
}

/// `throughputKBps` of each lease, as its holder last wrote it.
async fn lease_throughput(app: &str) -> BTreeMap<String, f64> {
    items(app)
        .await
        .iter()
        .filter(|i| s(i, "entityType").is_none_or(|t| t == "LEASE"))
        .filter_map(|i| {
            let kbps = i.get("throughputKBps")?.as_n().ok()?.parse::<f64>().ok()?;
            Some((s(i, "leaseKey")?, kbps))
        })
        .collect()
}

/// Load, not count: 8 shards, one with 10 times the traffic of each other, 4 of our workers
/// (default workers: no CPU published, so the leader balances them by throughput). The worker
/// holding the hot shard ends up with fewer leases than every other; the figures (leases and
/// throughput per worker) are printed.
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn the_leader_balances_by_load_not_by_count() {
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    let stream = testkit::unique_name("hot-shard");
    testkit::create_stream(&client, &stream, 8).await;
    let app = testkit::unique_name("hot-app");
    let mut ranges: Vec<(String, u128)> = testkit::shard_ranges(&client, &stream)
        .await
        .into_iter()
        .map(|(id, (start, _))| (id, start))
        .collect();
    ranges.sort();
    let hot = ranges[0].0.clone();
    // Every 200 ms: 10 records of 1 KiB to the hot shard, 1 to each other (about 50 KiB/s and
    // 5 KiB/s), until stopped.
    let stop = tokio_util::sync::CancellationToken::new();
    let putter = {
        let client = client.clone();
        let stream = stream.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let payload = aws_sdk_kinesis::primitives::Blob::new(vec![b'x'; 1024]);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !stop.is_cancelled() {
                tick.tick().await;
                let mut entries = Vec::new();
                for (i, (_, start)) in ranges.iter().enumerate() {
                    for _ in 0..if i == 0 { 10 } else { 1 } {
                        entries.push(
                            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                                .data(payload.clone())
                                .partition_key("k")
                                .explicit_hash_key(start.to_string())
                                .build()
                                .expect("entry"),
                        );
                    }
                }
                let _ = client
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(entries))
                    .send()
                    .await;
            }
        })
    };
    let workers: Vec<ServiceProcess> = (0..4)
        .map(|i| {
            our_led_consumer_with(
                &stream,
                &app,
                &format!("rust-{i}"),
                &[("CONSUMER_WORKER_CPU_SOURCE", "none")],
            )
        })
        .collect();
    let started = std::time::Instant::now();
    let settled = wait_until(Duration::from_secs(150), || async {
        let owners = lease_owners(&app).await;
        let Some((holder, leases)) = owners.iter().find(|(_, l)| l.contains(&hot)) else {
            return false;
        };
        owners.len() == 4
            && owners
                .iter()
                .filter(|(w, _)| *w != holder)
                .all(|(_, l)| l.len() > leases.len())
    })
    .await;
    let took = started.elapsed();
    stop.cancel();
    let _ = putter.await;
    let owners = lease_owners(&app).await;
    let kbps = lease_throughput(&app).await;
    let per_worker: BTreeMap<&String, (usize, f64)> = owners
        .iter()
        .map(|(w, l)| {
            (
                w,
                (
                    l.len(),
                    l.iter().map(|k| kbps.get(k).copied().unwrap_or(0.0)).sum(),
                ),
            )
        })
        .collect();
    let refs: Vec<&ServiceProcess> = workers.iter().collect();
    assert!(
        settled,
        "hot shard {hot}; leases and KB/s per worker {per_worker:?}: {}",
        save_logs("hot-shard", &refs)
    );
    let total: f64 = per_worker.values().map(|(_, t)| t).sum();
    let max = per_worker.values().map(|(_, t)| *t).fold(0.0, f64::max);
    let min = per_worker
        .values()
        .map(|(_, t)| *t)
        .fold(f64::MAX, f64::min);
    eprintln!(
        "load, not count: settled after {took:?}; hot shard {hot}; leases and KB/s per worker \
         {per_worker:?}; total {total:.1} KB/s, average {:.1}, max {max:.1}, min {min:.1}; \
         lease KB/s {kbps:?}",
        total / 4.0
    );
    for mut w in workers {
        w.stop();
    }
}

/// A sequence number's order: decimal strings of any length.
fn seq_key(p: &Position) -> (String, usize, String, u64) {
    (
        p.shard.clone(),
        p.sequence_number.len(),
        p.sequence_number.clone(),
        p.sub_sequence_number,
    )
}

/// Rolling migration both ways, records flowing all along: two Java workers replaced one at a
/// time by two of ours, then ours replaced by two Java workers, each stopped by SIGTERM once its
/// replacement holds leases. Nothing is lost, and a record is processed twice only when the
/// first to process it was a worker that stopped, after its last checkpoint on that shard.
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn a_rolling_migration_both_ways_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    let stream = testkit::unique_name("rolling");
    testkit::create_stream(&client, &stream, 4).await;
    let app = testkit::unique_name("rolling-app");
    let mut producer = load(&stream, 100_000);
    let holds = |worker: &'static str| {
        let app = app.clone();
        async move {
            wait_until(Duration::from_secs(90), || async {
                lease_owners(&app)
                    .await
                    .get(worker)
                    .is_some_and(|l| !l.is_empty())
            })
            .await
        }
    };
    let started = std::time::Instant::now();
    // The Java fleet first, one worker after the other: the second starts once the first has
    // made the lease table and its leases, so that the two JVMs do not race to create one
    // table (a CI run saw two started together hold no lease for 90 s; the race between two
    // fresh Java workers is not what this test is about).
    let mut java1 = java_led(&stream, &app, "java-1");
    let leases_made = wait_until(Duration::from_secs(90), || async {
        items_if_any(&app)
            .await
            .iter()
            .filter(|i| s(i, "leaseKey").is_some_and(|k| k.starts_with("shardId-")))
            .count()
            == 4
    })
    .await;
    assert!(leases_made, "{}", save_logs("rolling-java-1", &[&java1]));
    let mut java2 = java_led(&stream, &app, "java-2");
    // Which Java worker the Java leader gives the leases to before ours arrive is the Java KCL's
    // affair (runs here saw java-1 keep all 4 for 90 s, and java-2 take all 4): the migration
    // starts from a Java fleet holding every lease.
    let java_fleet = wait_until(Duration::from_secs(90), || async {
        let owners = lease_owners(&app).await;
        owners.keys().all(|w| w.starts_with("java-"))
            && owners.values().map(Vec::len).sum::<usize>() == 4
    })
    .await;
    assert!(
        java_fleet,
        "{:?}: {}",
        lease_owners(&app).await,
        save_logs("rolling-java", &[&java1, &java2])
    );
    let mut steps = vec![format!(
        "Java fleet holds every lease after {:?}: {:?}",
        started.elapsed(),
        lease_owners(&app).await
    )];
    let mut rust1 = our_led_consumer(&stream, &app, "rust-1");
    assert!(
        holds("rust-1").await,
        "{}",
        save_logs("rolling-r1", &[&java1, &java2, &rust1])
    );
    steps.push(format!("rust-1 joined: {:?}", lease_owners(&app).await));
    stop_java_holding_any(&mut java1);
    let mut rust2 = our_led_consumer(&stream, &app, "rust-2");
    assert!(
        holds("rust-2").await,
        "{}",
        save_logs("rolling-r2", &[&java2, &rust1, &rust2])
    );
    steps.push(format!("rust-2 joined: {:?}", lease_owners(&app).await));
    stop_java_holding_any(&mut java2);
    let ours_only = wait_until(Duration::from_secs(90), || async {
        let owners = lease_owners(&app).await;
        owners.keys().all(|w| w.starts_with("rust-"))
            && owners.values().map(Vec::len).sum::<usize>() == 4
    })
    .await;
    assert!(ours_only, "{:?}", lease_owners(&app).await);
    steps.push(format!(
        "ours only: {:?}, leader {:?}",
        lease_owners(&app).await,
        leader_of(&app).await
    ));
    // And back.
    let mut java3 = java_led(&stream, &app, "java-3");
    assert!(
        holds("java-3").await,
        "{}",
        save_logs("rolling-j3", &[&rust1, &rust2, &java3])
    );
    steps.push(format!("java-3 joined: {:?}", lease_owners(&app).await));
    rust1.stop();
    let mut java4 = java_led(&stream, &app, "java-4");
    assert!(
        holds("java-4").await,
        "{}",
        save_logs("rolling-j4", &[&rust2, &java3, &java4])
    );
    steps.push(format!("java-4 joined: {:?}", lease_owners(&app).await));
    rust2.stop();
    producer.signal("TERM");
    let sent = sent_ids(&mut producer);
    let stopped = [&java1, &java2, &rust1, &rust2];
    let live = [&java3, &java4];
    let processes: Vec<&ServiceProcess> = stopped.iter().chain(live.iter()).copied().collect();
    assert_all_processed(&sent, &processes, "rolling").await;
    let logs = save_logs("rolling", &processes);
    // Duplicates: the first receipt of a record received twice was by a stopped worker, past
    // its last checkpoint on that shard.
    let mut first: HashMap<String, (usize, Position)> = HashMap::new();
    let mut duplicates = 0;
    let mut from_stopped_batches = 0;
    for (i, p) in processes.iter().enumerate() {
        for (id, at) in received(p) {
            match first.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((i, at));
                }
            }
        }
    }
    let last_checkpoint = |p: &ServiceProcess, shard: &str| {
        p.events("checkpoint")
            .iter()
            .map(position)
            .filter(|c| c.shard == shard)
            .map(|c| seq_key(&c))
            .max()
    };
    let mut counted: HashSet<String> = HashSet::new();
    for p in processes.iter() {
        for (id, _) in received(p) {
            if !counted.insert(id.clone()) {
                let (by, at) = &first[&id];
                let uncheckpointed = *by < stopped.len()
                    && last_checkpoint(processes[*by], &at.shard).is_none_or(|c| seq_key(at) > c);
                assert!(
                    uncheckpointed,
                    "{id} processed twice, first by {} at {at:?}, which had checkpointed past it: {logs}",
                    processes[*by].name
                );
                from_stopped_batches += 1;
            }
        }
    }
    eprintln!(
        "rolling migration: {} sent, 0 lost, {duplicates} processed twice (all after a stopped \
         worker's last checkpoint: {from_stopped_batches}); steps: {steps:#?}",
        sent.len()
    );
    stop_java(&mut java3);
    stop_java(&mut java4);
}

/// `interop.WorkerMetricsCheck`: what the KCL's own classes make of the application's
/// worker-metrics items (one event per item).
fn java_worker_metrics(app: &str, layout: &str, interval_ms: &str) -> Vec<Value> {
    let mut env = aws_env();
    env.extend(
        [
            ("DYNAMODB_ENDPOINT", dynamo().endpoint()),
            ("APPLICATION_NAME", app.to_string()),
            ("LAYOUT", layout.to_string()),
            ("REPORTER_INTERVAL_MS", interval_ms.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let mut check = java("kcl-app", "interop.WorkerMetricsCheck", &env);
    check.expect_exit(Duration::from_secs(60), 0);
    assert_eq!(check.events("done").len(), 1, "{}", check.dump());
    check.events("worker metrics")
}

/// Our worker's worker-metrics item, read by the KCL 3.5.1's own data access classes and judged
/// by its own rules, in both layouts: in the lease table (a KCL 3.5 application) with the CPU
/// this machine reads, and in `<app>-WorkerMetricStats` (a KCL 3.0-3.4 application: the
/// `-CoordinatorState` table exists and has no migration record) as a default worker. Valid,
/// fresh and not failing: a Java KCL 3.x leader counts the worker and gives it leases. The item
/// is rewritten every interval (its `lut` moves on).
#[tokio::test]
#[ignore = "needs Java 17+ and the Maven build: run scripts/interop.sh"]
async fn a_java_kcl_leader_counts_our_workers_metrics_as_valid_and_fresh_in_both_layouts() {
    let _serial = SERIAL.lock().await;
    let client = kinesis().0.kinesis();
    let stream = testkit::unique_name("metrics-interop");
    testkit::create_stream(&client, &stream, 1).await;
    const INTERVAL_MS: &str = "2000";

    for (layout, cpu) in [("lease-table", "auto"), ("legacy-table", "none")] {
        let app = testkit::unique_name("metrics-app");
        if layout == "legacy-table" {
            testkit::create_hash_key_table(
                &dynamo().dynamodb(),
                &format!("{app}-CoordinatorState"),
                "key",
            )
            .await;
            testkit::create_hash_key_table(
                &dynamo().dynamodb(),
                &format!("{app}-WorkerMetricStats"),
                "wid",
            )
            .await;
        }
        let worker = format!("rust-{layout}");
        let mut env = testkit::service_env_with_dynamo(
            &kinesis().0.endpoint(),
            &dynamo().endpoint(),
            &stream,
        );
        env.extend(
            [
                ("CONSUMER_MODE", "leased"),
                ("CONSUMER_APPLICATION_NAME", app.as_str()),
                ("CONSUMER_WORKER_ID", worker.as_str()),
                ("CONSUMER_FAILOVER_MS", FAILOVER_MS),
                ("CONSUMER_WORKER_METRICS_INTERVAL_MS", INTERVAL_MS),
                ("CONSUMER_WORKER_CPU_SOURCE", cpu),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut ours = ServiceProcess::spawn(consumer_bin(), &env);
        if layout == "lease-table" {
            // The check tells a bad item from a good one: no operating range for `C`.
            let now = chrono::Utc::now().timestamp().to_string();
            let sts = HashMap::from([(
                "C".to_string(),
                AttributeValue::L(vec![AttributeValue::N("50".into())]),
            )]);
            let put = async {
                loop {
                    let put = dynamo()
                        .dynamodb()
                        .put_item()
                        .table_name(&app)
                        .item("leaseKey", AttributeValue::S("broken-worker".into()))
                        .item(
                            "entityType",
                            AttributeValue::S("WORKER_METRIC_STATS".into()),
                        )
                        .item("lut", AttributeValue::N(now.clone()))
                        .item("sts", AttributeValue::M(sts.clone()))
                        .send()
                        .await;
                    if put.is_ok() {
                        return;
                    }
                    // The worker creates the lease table.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), put)
                .await
                .expect("the lease table exists");
        }
        let mut first_update = None;
        let mut seen = Vec::new();
        let fresh_twice = testkit::eventually(Duration::from_secs(60), || {
            seen = java_worker_metrics(&app, layout, INTERVAL_MS);
            let Some(item) = seen.iter().find(|e| e["worker_id"] == worker.as_str()) else {
                return false;
            };
            let ok = item["valid"] == true && item["expired"] == false && item["failing"] == false;
            let lut = item["last_update"].as_i64();
            match first_update {
                None if ok => {
                    first_update = lut;
                    false
                }
                Some(first) => ok && lut > Some(first),
                None => false,
            }
        })
        .await;
        assert!(
            fresh_twice,
            "{layout}: {seen:?}\n{}",
            save_logs("worker-metrics", &[&ours])
        );
        let item = seen
            .iter()
            .find(|e| e["worker_id"] == worker.as_str())
            .unwrap();
        eprintln!("{layout}: the KCL's view of our item: {item}");
        assert_eq!(item["support_code"], 1, "{item}");
        if layout == "lease-table" {
            let broken = seen.iter().find(|e| e["worker_id"] == "broken-worker");
            assert_eq!(
                broken.map(|b| &b["valid"]),
                Some(&Value::Bool(false)),
                "{seen:?}"
            );
        }
        if cpu == "none" {
            assert_eq!(item["default"], true, "{item}");
        } else {
            // This machine has /proc/stat at least: a CPU value the leader balances by.
            assert_eq!(item["default"], false, "{item}");
            let cpu = item["cpu"].as_f64().expect("the leader's CPU average");
            assert!((0.0..=100.0).contains(&cpu), "{item}");
        }
        // Only in the table the application's layout says.
        let other = if layout == "lease-table" {
            "legacy-table"
        } else {
            "lease-table"
        };
        if other == "lease-table" {
            assert!(
                java_worker_metrics(&app, other, INTERVAL_MS).is_empty(),
                "{layout}: also in the lease table"
            );
        }
        ours.stop();
    }
}
