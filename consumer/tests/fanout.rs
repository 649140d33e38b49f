//! Enhanced fan-out (`CONSUMER_RETRIEVAL=fanout`): the real consumer binary reading a
//! kinesis-mock stream through `SubscribeToShard`, in polling and in leased mode, with the
//! producer binary writing. Every record once, resharding in order, renewals and replaced
//! subscriptions losing and repeating nothing, failover like polling, faults from the proxy.
//!
//! kinesis-mock 0.6.2 only: 0.5.2 (LocalStack 4.14.0's engine, `KINESIS_MOCK_PACKAGE=
//! kinesis-local-0.5.2`) has no `SubscribeToShard`, so `scripts/test.sh` runs this suite in its
//! first pass only. kinesis-mock pushes an event about once a second; the tests wait on
//! conditions, never on that pace. They run one at a time (failover bounds on a 2-core
//! machine).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_common::message::DataMessage;
use serde_json::Value;
use support::*;
use testkit::{field, FaultProxy, Kind, Rule, ServiceProcess};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shared kinesis-mock, checked to be a version that serves `SubscribeToShard`.
fn kinesis_mock() -> &'static testkit::Emulator {
    let package = testkit::kinesis_mock_package();
    assert_eq!(
        package, "kinesis-local",
        "the fan-out tests need kinesis-mock 0.6.x (SubscribeToShard); KINESIS_MOCK_PACKAGE={package} has none"
    );
    testkit::shared(Kind::KinesisMock)
}

/// A polling-mode consumer reading with fan-out through `endpoint`.
fn fanout_consumer(endpoint: &str, stream: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    let mut vars = vec![
        ("CONSUMER_RETRIEVAL", "fanout"),
        ("CONSUMER_EFO_NAME", "efo-test"),
        ("CONSUMER_SHARD_SYNC_MS", "1000"),
    ];
    vars.extend_from_slice(extra);
    ServiceProcess::spawn(consumer_bin(), &testkit::env_with(endpoint, stream, &vars))
}

fn producer(endpoint: &str, stream: &str, count: usize, interval_ms: u64) -> ServiceProcess {
    let count = count.to_string();
    let interval = interval_ms.to_string();
    ServiceProcess::spawn(
        &producer_bin(),
        &testkit::env_with(
            endpoint,
            stream,
            &[
                ("PRODUCER_COUNT", count.as_str()),
                ("PRODUCER_INTERVAL_MS", interval.as_str()),
            ],
        ),
    )
}

async fn put_messages(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    n: usize,
) -> HashSet<String> {
    let mut sent = HashSet::new();
    for _ in 0..n {
        let m = DataMessage::new();
        testkit::put_record(kinesis, stream, &m.id.to_string(), m.to_json()).await;
        sent.insert(m.id.to_string());
    }
    sent
}

/// Every id received exactly once, and each shard's sequence numbers in increasing order.
fn assert_once_in_order(process: &ServiceProcess, expected: usize) {
    let events = process.events("record received");
    let ids: Vec<String> = field(&events, "id");
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), distinct.len()),
        (expected, expected),
        "records repeated or missing: {}",
        process.dump()
    );
    // Sequence numbers are decimal, up to 128 digits: compare by length, then by digits.
    let mut last: HashMap<String, String> = HashMap::new();
    for e in &events {
        let shard = e["shard_id"].as_str().unwrap().to_string();
        let seq = e["sequence_number"].as_str().unwrap().to_string();
        if let Some(before) = last.insert(shard.clone(), seq.clone()) {
            assert!(
                (before.len(), &before) < (seq.len(), &seq),
                "{shard}: {seq} after {before}: {}",
                process.dump()
            );
        }
    }
}

async fn consumer_status(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    name: &str,
) -> Option<String> {
    let arn = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .ok()?
        .stream_description_summary()?
        .stream_arn()
        .to_string();
    let out = kinesis
        .describe_stream_consumer()
        .stream_arn(arn)
        .consumer_name(name)
        .send()
        .await
        .ok()?;
    Some(
        out.consumer_description()?
            .consumer_status()
            .as_str()
            .to_string(),
    )
}

#[tokio::test]
async fn polling_mode_with_fanout_reads_every_message_once_and_reuses_its_stream_consumer() {
    let _serial = SERIAL.lock().await;
    let emu = kinesis_mock();
    let kinesis = emu.kinesis();
    let stream = testkit::unique_name("efo-e2e");
    testkit::create_stream(&kinesis, &stream, 2).await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());

    let reader = fanout_consumer(&emu.endpoint(), &stream, &[("HTTP_ADDR", &addr)]);
    let mut producer = producer(&emu.endpoint(), &stream, 40, 0);
    producer.expect_exit(Duration::from_secs(60), 0);
    let sent = sent_ids(&producer);
    assert_eq!(sent.len(), 40);
    let all = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", reader.dump());
    // Registered by this consumer, ACTIVE, and what the status page and metrics say.
    assert_eq!(reader.events("stream consumer registered").len(), 1);
    assert_eq!(
        consumer_status(&kinesis, &stream, "efo-test")
            .await
            .as_deref(),
        Some("ACTIVE")
    );
    let started = reader.events("consumer started");
    assert_eq!(started[0]["retrieval"], "fanout", "{}", reader.dump());
    let (_, status) = testkit::http_get(&addr, "/status").expect("status answers");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["retrieval"], "fanout");
    let (_, metrics) = testkit::http_get(&addr, "/metrics").expect("metrics answer");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kinesis_consumer_info{")
                && l.contains("retrieval=\"fanout\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kinesis_consumer_millis_behind_latest{")),
        "lag per shard: {metrics}"
    );
    let mut reader = reader;
    reader.stop();
    assert_once_in_order(&reader, 40);
    let shards: HashSet<String> = field(&reader.events("record received"), "shard_id")
        .into_iter()
        .collect();
    assert_eq!(shards.len(), 2, "both shards were read");
    // Each record carries what the producer logged for it.
    testkit::assert_received_as_sent(&producer, &reader);

    // A second run finds the consumer and uses it as it is.
    let mut again = fanout_consumer(&emu.endpoint(), &stream, &[]);
    let all = again
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", again.dump());
    assert_eq!(again.events("stream consumer found").len(), 1);
    assert!(again.events("stream consumer registered").is_empty());
    again.stop();
    assert_once_in_order(&again, 40);
}

#[tokio::test]
async fn a_split_mid_run_loses_nothing_and_reads_the_parent_before_its_children() {
    let _serial = SERIAL.lock().await;
    let emu = kinesis_mock();
    let client = emu.kinesis();
    let stream = testkit::unique_name("efo-split");
    let parent = testkit::create_single_shard_stream(&client, &stream).await;

    let mut reader = fanout_consumer(&emu.endpoint(), &stream, &[]);
    let mut producer = producer(&emu.endpoint(), &stream, 60, 50);
    let some_read = testkit::eventually(Duration::from_secs(60), || ids(&reader).len() >= 15).await;
    assert!(some_read, "{}", reader.dump());
    testkit::split_in_half(&client, &stream, &parent).await;

    producer.expect_exit(Duration::from_secs(90), 0);
    let sent = sent_ids(&producer);
    assert_eq!(sent.len(), 60);
    let written_to_children = field(&producer.events("record sent"), "shard_id")
        .iter()
        .filter(|s| **s != parent)
        .count();
    assert!(
        written_to_children > 0,
        "the producer wrote to the children"
    );
    let all = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", reader.dump());
    reader.stop();
    assert_once_in_order(&reader, 60);
    let shard_of: Vec<String> = field(&reader.events("record received"), "shard_id");
    let last_parent = shard_of.iter().rposition(|s| *s == parent).unwrap();
    let first_child = shard_of.iter().position(|s| *s != parent).unwrap();
    assert!(
        last_parent < first_child,
        "a child record was read before the parent's last record: {shard_of:?}"
    );
    let ended = reader.events("shard ended");
    assert_eq!(field(&ended, "shard_id"), vec![parent.clone()]);
    let children = kinesis_common::kinesis::list_shards(&client, &stream)
        .await
        .unwrap();
    for child in children
        .iter()
        .filter(|s| s.parent_shard_id() == Some(&parent))
    {
        assert!(
            ended[0]["child_shards"]
                .as_str()
                .is_some_and(|c| c.contains(child.shard_id())),
            "{}",
            ended[0]
        );
    }
}

/// Subscriptions renewed every second while records flow: each new one starts after the last
/// event's continuation sequence number, so nothing is lost or read twice.
#[tokio::test]
async fn renewed_subscriptions_lose_and_repeat_nothing() {
    let _serial = SERIAL.lock().await;
    let emu = kinesis_mock();
    let stream = testkit::unique_name("efo-renew");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    let mut reader = fanout_consumer(
        &emu.endpoint(),
        &stream,
        &[("CONSUMER_EFO_RENEW_MS", "1000")],
    );
    // About 20 s of records: kinesis-mock takes a few seconds to let go of a subscription
    // its client closed, so a renewal cycle lasts about 4 s there.
    let mut producer = producer(&emu.endpoint(), &stream, 100, 200);
    producer.expect_exit(Duration::from_secs(90), 0);
    let sent = sent_ids(&producer);
    assert_eq!(sent.len(), 100);
    let all = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", reader.dump());
    reader.stop();
    let renewals = reader.events("subscription renewed");
    assert!(
        renewals.len() >= 3,
        "{} renewals: {}",
        renewals.len(),
        reader.dump()
    );
    // Renewals happened while records were being read, not only after.
    let received_lines: Vec<usize> = reader
        .lines()
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"record received\""))
        .map(|(i, _)| i)
        .collect();
    let (first, last) = (received_lines[0], *received_lines.last().unwrap());
    let renewed_between = reader
        .lines()
        .iter()
        .enumerate()
        .filter(|(i, l)| *i > first && *i < last && l.contains("\"subscription renewed\""))
        .count();
    assert!(renewed_between >= 2, "{}", reader.dump());
    assert_once_in_order(&reader, 100);
    // Renewing is routine: no warning about it.
    assert!(
        reader
            .events("transient error reading shard, retrying")
            .is_empty(),
        "{}",
        reader.dump()
    );
}

/// Every connection is cut while a subscription is open: the reader reports it once, backs off,
/// subscribes again after the last record it handed out, and loses and repeats nothing.
#[tokio::test]
async fn a_dropped_connection_mid_subscription_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let emu = kinesis_mock();
    let kinesis = emu.kinesis();
    let proxy = FaultProxy::start(&emu.endpoint());
    let stream = testkit::unique_name("efo-cut");
    testkit::create_stream(&kinesis, &stream, 1).await;
    let mut reader = fanout_consumer(&proxy.endpoint(), &stream, &[]);
    let mut sent = put_messages(&kinesis, &stream, 30).await;
    let first = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(first, "{}", reader.dump());

    proxy.set(vec![Rule::cut()]);
    let noticed = testkit::eventually(Duration::from_secs(30), || {
        !reader
            .events("transient error reading shard, retrying")
            .is_empty()
    })
    .await;
    assert!(noticed, "{}", reader.dump());
    sent.extend(put_messages(&kinesis, &stream, 15).await);
    proxy.clear();
    sent.extend(put_messages(&kinesis, &stream, 15).await);
    let all = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", reader.dump());
    assert!(!reader.events("reading shard again").is_empty());
    reader.stop();
    assert_once_in_order(&reader, 60);
}

/// `SubscribeToShard` refused: throttled (`LimitExceededException`, one call a second per
/// consumer and shard) and then still held elsewhere (`ResourceInUseException`). The reader
/// reports the run of failures once, keeps at least a second between calls, and reads on.
#[tokio::test]
async fn refused_subscriptions_are_retried_a_second_apart() {
    let _serial = SERIAL.lock().await;
    let emu = kinesis_mock();
    let kinesis = emu.kinesis();
    let proxy = FaultProxy::start(&emu.endpoint());
    let stream = testkit::unique_name("efo-limit");
    testkit::create_stream(&kinesis, &stream, 1).await;
    let sent = put_messages(&kinesis, &stream, 20).await;
    proxy.set(vec![
        Rule::error(400, Some("LimitExceededException"))
            .only(&["SubscribeToShard"])
            .times(2),
        Rule::error(400, Some("ResourceInUseException"))
            .only(&["SubscribeToShard"])
            .times(2),
    ]);
    let mut reader = fanout_consumer(&proxy.endpoint(), &stream, &[]);
    let all = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", reader.dump());
    reader.stop();
    assert_eq!(proxy.faults("SubscribeToShard"), 4, "{}", reader.dump());
    assert!(proxy.requests("SubscribeToShard") >= 5);
    let warned = reader.events("transient error reading shard, retrying");
    assert_eq!(warned.len(), 1, "one report for the run: {}", reader.dump());
    assert!(
        warned[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("LimitExceededException")),
        "{}",
        warned[0]
    );
    let again = reader.events("reading shard again");
    assert_eq!(again.len(), 1, "{}", reader.dump());
    assert_eq!(again[0]["failures"], 4);
    // Four refusals, each followed by at least a second: the fifth call came 4 s after the
    // first (the margin covers the clock's millisecond rounding, not load).
    let t =
        |e: &Value| chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    let waited = t(&again[0]) - t(&warned[0]);
    assert!(
        waited >= chrono::Duration::milliseconds(2950),
        "{waited:?}: {}",
        reader.dump()
    );
    assert_once_in_order(&reader, 20);
}

/// A subscription that stays open and delivers nothing (the proxy passes the answer's head and
/// holds its event stream) is noticed after `CONSUMER_EFO_IDLE_MS` and replaced; nothing is
/// lost or repeated.
#[tokio::test]
async fn a_subscription_that_stops_delivering_is_replaced() {
    let _serial = SERIAL.lock().await;
    let emu = kinesis_mock();
    let kinesis = emu.kinesis();
    let proxy = FaultProxy::start(&emu.endpoint());
    let stream = testkit::unique_name("efo-stall");
    testkit::create_stream(&kinesis, &stream, 1).await;
    let mut sent = put_messages(&kinesis, &stream, 10).await;
    let mut reader = fanout_consumer(
        &proxy.endpoint(),
        &stream,
        &[
            ("CONSUMER_EFO_IDLE_MS", "2000"),
            ("CONSUMER_EFO_RENEW_MS", "3000"),
        ],
    );
    let first = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(first, "{}", reader.dump());
    // The subscription after the next renewal goes quiet.
    proxy.set(vec![Rule::stall().only(&["SubscribeToShard"]).times(1)]);
    let stalled_from = proxy.requests("SubscribeToShard");
    let stalled = testkit::eventually(Duration::from_secs(30), || {
        proxy.faults("SubscribeToShard") == 1
    })
    .await;
    assert!(stalled, "{}", reader.dump());
    sent.extend(put_messages(&kinesis, &stream, 10).await);
    let all = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", reader.dump());
    assert!(proxy.requests("SubscribeToShard") > stalled_from + 1);
    reader.stop();
    let warned = reader.events("transient error reading shard, retrying");
    assert_eq!(warned.len(), 1, "{}", reader.dump());
    assert!(
        warned[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no event for 2000 ms")),
        "{}",
        warned[0]
    );
    assert_once_in_order(&reader, 20);
}

/// SIGTERM ends a fan-out consumer within 5 seconds while its subscription is open and quiet,
/// and while `SubscribeToShard` calls hang (30 s call timeouts).
#[tokio::test]
async fn sigterm_exits_within_5_seconds_with_a_quiet_or_hanging_subscription() {
    let _serial = SERIAL.lock().await;
    let emu = kinesis_mock();
    let kinesis = emu.kinesis();
    let proxy = FaultProxy::start(&emu.endpoint());
    let stream = testkit::unique_name("efo-term");
    testkit::create_stream(&kinesis, &stream, 2).await;
    for rule in [Rule::stall(), Rule::hang()] {
        proxy.set(vec![rule.only(&["SubscribeToShard"])]);
        let before = proxy.requests("SubscribeToShard");
        let mut reader = fanout_consumer(
            &proxy.endpoint(),
            &stream,
            &[
                ("KINESIS_ATTEMPT_TIMEOUT_MS", "30000"),
                ("KINESIS_CALL_TIMEOUT_MS", "30000"),
            ],
        );
        let subscribed = testkit::eventually(Duration::from_secs(60), || {
            proxy.requests("SubscribeToShard") >= before + 2
        })
        .await;
        assert!(subscribed, "{}", reader.dump());
        reader.stop();
    }
}

// ---- leased mode with fan-out ----

async fn setup(prefix: &str, shards: i32) -> Setup {
    let mut setup = Setup::new(prefix, shards, kinesis_mock()).await;
    // The stream consumer is named after the application (the default).
    setup.worker_vars = vec![("CONSUMER_RETRIEVAL", "fanout")];
    setup
}

#[tokio::test]
async fn leased_fanout_kill_9_hands_shards_over_and_repeats_only_the_last_batch() {
    let _serial = SERIAL.lock().await;
    let setup = setup("efo-kill", 4).await;
    let mut victim = setup.worker("victim");
    let mut survivor = setup.worker("survivor");
    settle_two_by_two(&setup, ("victim", &victim), ("survivor", &survivor)).await;
    let victim_shards = setup.owned_by("victim").await;
    // Both workers share the one stream consumer named after the application.
    let found = victim.events("stream consumer registered").len()
        + survivor.events("stream consumer registered").len();
    assert_eq!(found, 1, "registered once");

    let mut producer = setup.producer(300, 25);
    let busy = testkit::eventually(Duration::from_secs(60), || {
        ids(&victim).len() >= 40 && victim.events("checkpoint").len() >= 4
    })
    .await;
    assert!(busy, "{}", victim.dump());
    let acquired_before = survivor.events("lease acquired").len();
    victim.signal("KILL");
    let killed = Instant::now();
    victim.wait_exit(Duration::from_secs(5));
    let acquired = testkit::eventually(Duration::from_secs(20), || {
        acquired_since(&survivor, acquired_before).is_superset(&victim_shards)
    })
    .await;
    let acquired_after = killed.elapsed();
    assert!(acquired, "{}", survivor.dump());
    eprintln!("fan-out, after kill -9: leases acquired in {acquired_after:?}");
    let bound = Duration::from_millis(FAILOVER_MS + RENEW_MS + 2000);
    assert!(acquired_after <= bound, "took {acquired_after:?}");

    wait_ok(&mut producer, Duration::from_secs(120));
    let sent = sent_ids(&producer);
    assert_eq!(sent.len(), 300);
    let complete = testkit::eventually(Duration::from_secs(60), || {
        all_received(&[&victim, &survivor], &sent)
    })
    .await;
    assert!(complete, "{}", survivor.dump());
    let dups = duplicates(&[&victim, &survivor]);
    let allowed = after_last_checkpoint(&victim, &victim_shards);
    assert!(
        dups.is_subset(&allowed),
        "duplicates not from the killed worker's last batch: {:?}",
        dups.difference(&allowed).collect::<Vec<_>>()
    );
    assert!(duplicates(&[&survivor]).is_empty(), "{}", survivor.dump());
    eprintln!(
        "fan-out kill -9: {} duplicates, {} allowed",
        dups.len(),
        allowed.len()
    );
    survivor.stop();
}

#[tokio::test]
async fn leased_fanout_sigterm_hands_shards_over_with_no_duplicates_and_no_loss() {
    let _serial = SERIAL.lock().await;
    let setup = setup("efo-term", 4).await;
    let mut leaving = setup.worker("leaving");
    let mut staying = setup.worker("staying");
    settle_two_by_two(&setup, ("leaving", &leaving), ("staying", &staying)).await;
    let leaving_shards = setup.owned_by("leaving").await;

    let mut producer = setup.producer(300, 25);
    let busy = testkit::eventually(Duration::from_secs(60), || ids(&leaving).len() >= 40).await;
    assert!(busy, "{}", leaving.dump());
    let acquired_before = staying.events("lease acquired").len();
    let stopped = Instant::now();
    leaving.stop();
    let acquired = testkit::eventually(Duration::from_secs(10), || {
        acquired_since(&staying, acquired_before).is_superset(&leaving_shards)
    })
    .await;
    assert!(acquired, "{}", staying.dump());
    eprintln!(
        "fan-out, after SIGTERM: leases acquired in {:?}",
        stopped.elapsed()
    );

    wait_ok(&mut producer, Duration::from_secs(120));
    let sent = sent_ids(&producer);
    assert_eq!(sent.len(), 300);
    let complete = testkit::eventually(Duration::from_secs(60), || {
        all_received(&[&leaving, &staying], &sent)
    })
    .await;
    assert!(complete, "{}", staying.dump());
    let dups = duplicates(&[&leaving, &staying]);
    assert!(
        dups.is_empty(),
        "duplicates after a graceful handoff: {dups:?}"
    );
    staying.stop();
}

/// A lease checkpointed at the first user record of an aggregate: the fan-out reader starts
/// at that sequence number (`AT_SEQUENCE_NUMBER`, as polling does) and the worker resumes with
/// the aggregate's second user record, repeating nothing.
#[tokio::test]
async fn leased_fanout_resumes_inside_an_aggregate_from_its_checkpoint() {
    let _serial = SERIAL.lock().await;
    let setup = setup("efo-agg", 1).await;
    let shards = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap();
    let before = put_messages(&setup.kinesis, &setup.stream, 3).await;
    let messages: Vec<DataMessage> = (0..3).map(|_| DataMessage::new()).collect();
    let mut aggregator = kinesis_common::kpl::Aggregator::new();
    for m in &messages {
        aggregator.add(&m.id.to_string(), None, &m.to_json());
    }
    let aggregate =
        testkit::put_record(&setup.kinesis, &setup.stream, "agg", aggregator.finish()).await;
    let later = put_messages(&setup.kinesis, &setup.stream, 2).await;

    // A first worker reads everything and stops; its lease is then set back to the first user
    // record of the aggregate, as a per-user-record checkpoint would leave it.
    let mut first = setup.worker("first");
    let total = before.len() + messages.len() + later.len();
    let read = testkit::eventually(Duration::from_secs(60), || ids(&first).len() == total).await;
    assert!(read, "{}", first.dump());
    first.stop();
    setup
        .dynamo
        .update_item()
        .table_name(&setup.app)
        .key(
            "leaseKey",
            AttributeValue::S(shards[0].shard_id().to_string()),
        )
        .update_expression("SET checkpoint = :c, checkpointSubSequenceNumber = :s")
        .expression_attribute_values(
            ":c",
            AttributeValue::S(aggregate.sequence_number().to_string()),
        )
        .expression_attribute_values(":s", AttributeValue::N("0".into()))
        .send()
        .await
        .expect("UpdateItem");

    let mut second = setup.worker("second");
    let expected: HashSet<String> = [messages[1].id.to_string(), messages[2].id.to_string()]
        .into_iter()
        .chain(later)
        .collect();
    let all = testkit::eventually(Duration::from_secs(60), || {
        ids(&second).into_iter().collect::<HashSet<_>>() == expected
    })
    .await;
    assert!(all, "{}", second.dump());
    second.stop();
    assert_eq!(ids(&second).len(), 4, "{}", second.dump());
    let processing = second.events("processing shard");
    assert_eq!(
        processing[0]["checkpoint"].as_str(),
        Some(aggregate.sequence_number()),
        "{}",
        second.dump()
    );
}
