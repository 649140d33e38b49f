//! Leased mode across processes: real consumer binaries (`CONSUMER_MODE=leased`) share the
//! shards of a kinesis-mock stream through a lease table in dynalite (or DynamoDB Local with
//! `TEST_DYNAMODB=dynamodb-local`, as `scripts/interop.sh` runs them), with the producer binary
//! writing. Balancing, failover after kill -9, handoff on SIGTERM, resharding order, the KCL
//! table format (both ways) and resuming from checkpoints.
//!
//! Short timings: failover 3 s, so renewal and scans every second. The tests run one at a time
//! (they measure failover times on a 2-core machine).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_common::message::DataMessage;
use support::*;
use testkit::{field, FaultProxy, Kind, Rule, ServiceProcess};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup(prefix: &str, shards: i32) -> Setup {
    Setup::new(prefix, shards, testkit::shared(Kind::KinesisMock)).await
}

impl Setup {
    /// Creates the lease table the way a Java KCL application does (hash key `leaseKey`,
    /// on-demand); `create_hash_key_table` waits until it is ACTIVE.
    async fn create_kcl_table(&self) {
        testkit::create_hash_key_table(&self.dynamo, &self.app, "leaseKey").await;
    }

    async fn put_item(&self, item: HashMap<String, AttributeValue>) {
        self.dynamo
            .put_item()
            .table_name(&self.app)
            .set_item(Some(item))
            .send()
            .await
            .expect("PutItem");
    }
}

/// A lease item as the Java KCL 2.x writes it.
fn kcl_item(
    shard: &aws_sdk_kinesis::types::Shard,
    owner: Option<&str>,
    counter: i64,
    checkpoint: &str,
    sub_sequence_number: i64,
) -> HashMap<String, AttributeValue> {
    let range = shard.hash_key_range().unwrap();
    let mut item: HashMap<String, AttributeValue> = [
        ("leaseKey", AttributeValue::S(shard.shard_id().into())),
        ("leaseCounter", AttributeValue::N(counter.to_string())),
        ("checkpoint", AttributeValue::S(checkpoint.into())),
        (
            "checkpointSubSequenceNumber",
            AttributeValue::N(sub_sequence_number.to_string()),
        ),
        (
            "ownerSwitchesSinceCheckpoint",
            AttributeValue::N("0".into()),
        ),
        (
            "startingHashKey",
            AttributeValue::S(range.starting_hash_key().into()),
        ),
        (
            "endingHashKey",
            AttributeValue::S(range.ending_hash_key().into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(owner) = owner {
        item.insert("leaseOwner".into(), AttributeValue::S(owner.into()));
    }
    item
}

fn load(owners: &BTreeMap<String, Option<String>>) -> BTreeMap<String, usize> {
    let mut load = BTreeMap::new();
    for owner in owners.values().flatten() {
        *load.entry(owner.clone()).or_default() += 1;
    }
    load
}

#[tokio::test]
async fn workers_balance_six_shards_and_rebalance_when_one_joins_or_leaves() {
    let _serial = SERIAL.lock().await;
    let setup = setup("balance", 6).await;
    let mut workers: Vec<ServiceProcess> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| setup.worker(id))
        .collect();
    let even = until(Duration::from_secs(60), || async {
        let owners = setup.owners().await;
        owners.len() == 6
            && load(&owners)
                == BTreeMap::from([("w1".into(), 2), ("w2".into(), 2), ("w3".into(), 2)])
    })
    .await;
    assert!(
        even,
        "{:?}\n{}",
        setup.owners().await,
        dump_all(&workers.iter().collect::<Vec<_>>())
    );

    workers.push(setup.worker("w4"));
    let fair = |owners: &BTreeMap<String, Option<String>>, names: &[&str]| {
        let load = load(owners);
        owners.len() == 6
            && owners.values().all(Option::is_some)
            && names
                .iter()
                .all(|n| (1..=2).contains(&load.get(*n).copied().unwrap_or(0)))
            && load.values().sum::<usize>() == 6
    };
    let all4 = ["w1", "w2", "w3", "w4"];
    let joined = until(Duration::from_secs(30), || async {
        fair(&setup.owners().await, &all4)
    })
    .await;
    assert!(joined, "{:?}", setup.owners().await);
    // Settled, not passing through: still fair three cycles later.
    tokio::time::sleep(Duration::from_millis(3 * RENEW_MS)).await;
    assert!(
        fair(&setup.owners().await, &all4),
        "{:?}",
        setup.owners().await
    );
    assert!(!workers[3].events("lease acquired").is_empty());

    let held_by_w1 = load(&setup.owners().await).get("w1").copied().unwrap_or(0);
    stop(&mut workers[0]);
    // Handed to the least loaded live workers (or released when there is none).
    let released =
        workers[0].events("lease released").len() + workers[0].events("lease handed over").len();
    assert_eq!(released, held_by_w1, "{}", workers[0].dump());
    let left = Instant::now();
    let rest = ["w2", "w3", "w4"];
    let taken_over = until(Duration::from_secs(30), || async {
        let owners = setup.owners().await;
        fair(&owners, &rest) && load(&owners).values().all(|n| *n == 2)
    })
    .await;
    assert!(taken_over, "{:?}", setup.owners().await);
    eprintln!(
        "leases of the stopped worker taken over after {:?}",
        left.elapsed()
    );
    for w in &mut workers[1..] {
        stop(w);
    }
}

#[tokio::test]
async fn kill_9_hands_shards_over_within_failover_and_repeats_only_the_last_batch() {
    let _serial = SERIAL.lock().await;
    let setup = setup("kill", 4).await;
    let mut victim = setup.worker("victim");
    let mut survivor = setup.worker("survivor");
    settle_two_by_two(&setup, ("victim", &victim), ("survivor", &survivor)).await;
    let victim_shards: HashSet<String> = setup
        .owners()
        .await
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some("victim"))
        .map(|(k, _)| k)
        .collect();

    let mut producer = setup.producer(300, 25);
    let busy = testkit::eventually(Duration::from_secs(60), || {
        ids(&victim).len() >= 40 && victim.events("checkpoint").len() >= 4
    })
    .await;
    assert!(busy, "{}", victim.dump());
    let acquired_before = survivor.events("lease acquired").len();
    let received_before = survivor.events("record received").len();
    victim.signal("KILL");
    let killed = Instant::now();
    victim.wait_exit(Duration::from_secs(5));

    let acquired = testkit::eventually(Duration::from_secs(20), || {
        acquired_since(&survivor, acquired_before).is_superset(&victim_shards)
    })
    .await;
    let acquired_after = killed.elapsed();
    assert!(acquired, "{}", survivor.dump());
    let processed = testkit::eventually(Duration::from_secs(20), || {
        field(
            &survivor.events("record received")[received_before..],
            "shard_id",
        )
        .iter()
        .any(|s| victim_shards.contains(s))
    })
    .await;
    assert!(processed, "{}", survivor.dump());
    let processed_after = killed.elapsed();
    eprintln!(
        "after kill -9: leases acquired in {acquired_after:?}, first record in {processed_after:?}"
    );
    // Failover time plus one renewal interval, plus the scan and process start-up on a busy
    // 2-core machine.
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
        "duplicates not from the killed worker's last batch: {:?}; {}",
        dups.difference(&allowed).collect::<Vec<_>>(),
        save_logs("kill", &[&victim, &survivor])
    );
    assert!(
        duplicates(&[&survivor]).is_empty(),
        "the survivor read a record twice"
    );
    eprintln!(
        "kill -9: {} duplicates, {} allowed",
        dups.len(),
        allowed.len()
    );
    stop(&mut survivor);
}

#[tokio::test]
async fn sigterm_hands_shards_over_with_no_duplicates_and_no_loss() {
    let _serial = SERIAL.lock().await;
    let setup = setup("term", 4).await;
    let mut leaving = setup.worker("leaving");
    let mut staying = setup.worker("staying");
    settle_two_by_two(&setup, ("leaving", &leaving), ("staying", &staying)).await;
    let leaving_shards: HashSet<String> = setup
        .owners()
        .await
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some("leaving"))
        .map(|(k, _)| k)
        .collect();

    let mut producer = setup.producer(300, 25);
    let busy = testkit::eventually(Duration::from_secs(60), || ids(&leaving).len() >= 40).await;
    assert!(busy, "{}", leaving.dump());
    let acquired_before = staying.events("lease acquired").len();
    let stopped = Instant::now();
    stop(&mut leaving);
    let acquired = testkit::eventually(Duration::from_secs(10), || {
        acquired_since(&staying, acquired_before).is_superset(&leaving_shards)
    })
    .await;
    assert!(acquired, "{}", staying.dump());
    eprintln!("after SIGTERM: leases acquired in {:?}", stopped.elapsed());
    assert!(stopped.elapsed() <= Duration::from_millis(5000 + RENEW_MS + 1000));

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
    let received: Vec<String> = ids(&leaving).into_iter().chain(ids(&staying)).collect();
    assert_eq!(received.len(), 300);
    stop(&mut staying);
}

#[tokio::test]
async fn split_and_merge_while_records_flow_read_parents_before_children() {
    let _serial = SERIAL.lock().await;
    let setup = setup("reshard", 1).await;
    let parent = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap()[0]
        .shard_id()
        .to_string();
    let mut worker = setup.worker("solo");
    let mut producer = setup.producer(240, 40);
    let some = testkit::eventually(Duration::from_secs(60), || ids(&worker).len() >= 20).await;
    assert!(some, "{}", worker.dump());
    testkit::split_in_half(&setup.kinesis, &setup.stream, &parent).await;
    let parent_ended = testkit::eventually(Duration::from_secs(60), || {
        field(&worker.events("shard ended"), "shard_id").contains(&parent)
    })
    .await;
    assert!(parent_ended, "{}", worker.dump());
    let shards = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap();
    let children: Vec<String> = shards
        .iter()
        .filter(|s| s.parent_shard_id() == Some(parent.as_str()))
        .map(|s| s.shard_id().to_string())
        .collect();
    assert_eq!(children.len(), 2);
    let child_read = testkit::eventually(Duration::from_secs(60), || {
        field(&worker.events("record received"), "shard_id")
            .iter()
            .any(|s| children.contains(s))
    })
    .await;
    assert!(child_read, "{}", worker.dump());
    setup
        .kinesis
        .merge_shards()
        .stream_name(&setup.stream)
        .shard_to_merge(&children[0])
        .adjacent_shard_to_merge(&children[1])
        .send()
        .await
        .expect("MergeShards");

    wait_ok(&mut producer, Duration::from_secs(120));
    let sent = sent_ids(&producer);
    assert_eq!(sent.len(), 240);
    let complete =
        testkit::eventually(Duration::from_secs(60), || all_received(&[&worker], &sent)).await;
    assert!(complete, "{}", worker.dump());
    assert!(duplicates(&[&worker]).is_empty(), "{}", worker.dump());

    // Lineage from the stream itself, then the order of the worker's log.
    let shards = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap();
    let merged: Vec<&aws_sdk_kinesis::types::Shard> = shards
        .iter()
        .filter(|s| s.adjacent_parent_shard_id().is_some())
        .collect();
    assert_eq!(merged.len(), 1, "{shards:?}");
    let merged_id = merged[0].shard_id().to_string();
    let written_to_merged = field(&producer.events("record sent"), "shard_id")
        .iter()
        .filter(|s| **s == merged_id)
        .count();
    assert!(
        written_to_merged > 0,
        "the producer wrote to the merged shard"
    );
    let order: Vec<String> = field(&worker.events("record received"), "shard_id");
    let first = |id: &str| order.iter().position(|s| s == id);
    let last = |id: &str| order.iter().rposition(|s| s == id);
    for shard in &shards {
        let Some(first_child) = first(shard.shard_id()) else {
            continue;
        };
        for p in [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
        {
            if let Some(last_parent) = last(p) {
                assert!(
                    last_parent < first_child,
                    "{} read before its parent {p} ended: {order:?}",
                    shard.shard_id()
                );
            }
        }
    }

    // The table: KCL names and types, lineage in both directions.
    stop(&mut worker);
    let items = setup.items().await;
    assert_eq!(items.len(), 4, "{items:?}");
    let by_key: HashMap<String, &HashMap<String, AttributeValue>> = items
        .iter()
        .map(|i| (s(i, "leaseKey").unwrap(), i))
        .collect();
    for item in &items {
        for name in ["leaseKey", "checkpoint", "startingHashKey", "endingHashKey"] {
            assert!(
                item.get(name).is_some_and(|v| v.is_s()),
                "{name} in {item:?}"
            );
        }
        for name in [
            "leaseCounter",
            "checkpointSubSequenceNumber",
            "ownerSwitchesSinceCheckpoint",
        ] {
            assert!(
                item.get(name).is_some_and(|v| v.is_n()),
                "{name} in {item:?}"
            );
        }
        // Released on stop.
        assert!(!item.contains_key("leaseOwner"), "{item:?}");
    }
    for ended in [&parent, &children[0], &children[1]] {
        let item = by_key[ended];
        assert_eq!(s(item, "checkpoint").as_deref(), Some("SHARD_END"));
        assert!(item["childShardIds"].is_ss(), "{item:?}");
    }
    for child in &children {
        assert_eq!(
            by_key[child]["parentShardId"].as_ss().unwrap(),
            &vec![parent.clone()]
        );
    }
    let mut merge_parents = by_key[&merged_id]["parentShardId"].as_ss().unwrap().clone();
    merge_parents.sort();
    let mut expected = children.clone();
    expected.sort();
    assert_eq!(merge_parents, expected);
    assert!(by_key[&merged_id]["checkpoint"]
        .as_s()
        .unwrap()
        .chars()
        .all(|c| c.is_ascii_digit()));
}

/// A table as a Java KCL 2.x application leaves it: one lease checkpointed mid-shard and held by
/// a worker that died, one never taken. The Rust worker takes both, the dead worker's after the
/// failover time, resumes after the checkpoint, and keeps attributes it does not know.
#[tokio::test]
async fn a_lease_table_written_by_the_java_kcl_is_taken_over_from_its_checkpoint() {
    let _serial = SERIAL.lock().await;
    let setup = setup("kcl", 2).await;
    let shards = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap();
    // Records on both shards: partition keys spread over the hash range.
    let mut written: Vec<(String, String, String)> = Vec::new();
    for i in 0..40 {
        written.push(setup.put(&format!("key-{i}")).await);
    }
    let on = |shard: &str| -> Vec<&(String, String, String)> {
        written.iter().filter(|(_, s, _)| s == shard).collect()
    };
    let (a, b) = (shards[0].shard_id(), shards[1].shard_id());
    assert!(
        on(a).len() >= 4 && !on(b).is_empty(),
        "records on both shards"
    );
    let checkpointed = on(a)[3].2.clone();

    setup.create_kcl_table().await;
    let mut dead_workers_item = kcl_item(
        &shards[0],
        Some("ip-10-1-2-3.ec2.internal:4f1e"),
        1234,
        &checkpointed,
        0,
    );
    dead_workers_item.insert("leaseTableExtra".into(), AttributeValue::S("kept".into()));
    setup.put_item(dead_workers_item).await;
    setup
        .put_item(kcl_item(&shards[1], None, 7, "TRIM_HORIZON", 0))
        .await;

    let mut worker = setup.worker("rust-worker");
    let expected: HashSet<String> = on(a)[4..]
        .iter()
        .chain(on(b).iter())
        .map(|(id, _, _)| id.clone())
        .collect();
    let started = Instant::now();
    let all = testkit::eventually(Duration::from_secs(30), || {
        ids(&worker).into_iter().collect::<HashSet<_>>() == expected
    })
    .await;
    assert!(all, "{}", worker.dump());
    assert!(
        started.elapsed() >= Duration::from_millis(FAILOVER_MS),
        "the dead Java worker's lease was taken before it expired"
    );
    assert_eq!(ids(&worker).len(), expected.len(), "{}", worker.dump());
    let taken = worker.events("lease acquired");
    let from_java = taken
        .iter()
        .find(|e| e["shard_id"].as_str() == Some(a))
        .expect("lease of the dead worker acquired");
    assert_eq!(from_java["previous_owner"], "ip-10-1-2-3.ec2.internal:4f1e");
    // A KCL 2.x table has no LeaseOwnerToLeaseKeyIndex: scans alone, and a release on stop.
    assert_eq!(
        worker
            .events(
                "the lease table has no LeaseOwnerToLeaseKeyIndex: leases are found by scans only"
            )
            .len(),
        1,
        "{}",
        worker.dump()
    );
    stop(&mut worker);

    let items = setup.items().await;
    let item_a = items
        .iter()
        .find(|i| s(i, "leaseKey").as_deref() == Some(a))
        .unwrap();
    assert_eq!(
        s(item_a, "checkpoint"),
        Some(on(a).last().unwrap().2.clone())
    );
    assert_eq!(s(item_a, "leaseTableExtra").as_deref(), Some("kept"));
    assert!(!item_a.contains_key("leaseOwner"));
    let counter: i64 = item_a["leaseCounter"].as_n().unwrap().parse().unwrap();
    assert!(counter > 1234);
}

/// `STREAM_NAME` changed and `CONSUMER_APPLICATION_NAME` kept (easy with docker compose): the
/// consumer must not resume the new stream's shards from the old stream's checkpoints (shard ids
/// repeat across streams). It stops at start with one line naming both streams and the table,
/// exit 2, and leaves the table as it was.
#[tokio::test]
async fn a_lease_table_of_another_stream_stops_the_consumer_at_start() {
    let _serial = SERIAL.lock().await;
    let setup = setup("old-stream", 2).await;
    let mut producer = setup.producer(10, 0);
    wait_ok(&mut producer, Duration::from_secs(60));
    let sent = sent_ids(&producer);
    let mut first = setup.worker("first");
    let read = testkit::eventually(Duration::from_secs(60), || {
        ids(&first).into_iter().collect::<HashSet<_>>() == sent
    })
    .await;
    assert!(read, "{}", first.dump());
    stop(&mut first);
    let sorted = |mut items: Vec<HashMap<String, AttributeValue>>| {
        items.sort_by_key(|i| s(i, "leaseKey"));
        items
    };
    let before = sorted(setup.items().await);
    assert_eq!(before.len(), 2, "{before:?}");
    for item in &before {
        assert_eq!(
            s(item, "kinesisStreamName").as_deref(),
            Some(setup.stream.as_str()),
            "{item:?}"
        );
    }

    let new_stream = testkit::unique_name("new-stream");
    testkit::create_stream(&setup.kinesis, &new_stream, 2).await;
    testkit::put_record(
        &setup.kinesis,
        &new_stream,
        "key",
        DataMessage::new().to_json(),
    )
    .await;
    let mut second = setup.worker_with("second", &[("STREAM_NAME", new_stream.as_str())]);
    second.expect_exit(Duration::from_secs(30), 2);
    let output: Vec<String> = second
        .lines()
        .into_iter()
        .chain(second.stderr_lines())
        .collect();
    let naming: Vec<&String> = output
        .iter()
        .filter(|l| l.contains(&setup.stream) && l.contains(&new_stream) && l.contains(&setup.app))
        .collect();
    assert_eq!(naming.len(), 1, "{}", second.dump());
    assert!(
        second.events("lease acquired").is_empty(),
        "{}",
        second.dump()
    );
    assert!(
        second.events("record received").is_empty(),
        "{}",
        second.dump()
    );
    assert_eq!(sorted(setup.items().await), before, "the table was changed");
}

#[tokio::test]
async fn a_restarted_worker_resumes_from_the_checkpoint() {
    let _serial = SERIAL.lock().await;
    let setup = setup("restart", 2).await;
    let mut first = setup.worker("first");
    let mut producer = setup.producer(30, 0);
    wait_ok(&mut producer, Duration::from_secs(60));
    let old = sent_ids(&producer);
    let read = testkit::eventually(Duration::from_secs(60), || {
        ids(&first).into_iter().collect::<HashSet<_>>() == old
    })
    .await;
    assert!(read, "{}", first.dump());
    stop(&mut first);
    let owners = setup.owners().await;
    assert_eq!(owners.len(), 2);
    assert!(owners.values().all(Option::is_none), "released: {owners:?}");

    let mut producer = setup.producer(20, 0);
    wait_ok(&mut producer, Duration::from_secs(60));
    let new = sent_ids(&producer);
    let mut second = setup.worker("second");
    let read = testkit::eventually(Duration::from_secs(60), || {
        ids(&second).into_iter().collect::<HashSet<_>>() == new
    })
    .await;
    assert!(read, "{}", second.dump());
    assert_eq!(ids(&second).len(), 20, "{}", second.dump());
    stop(&mut second);
}

/// A lease checkpointed at the first user record of an aggregated record (as a Java KCL
/// application that checkpoints per user record writes it): the worker resumes inside the
/// aggregate, with its second user record, and repeats nothing.
#[tokio::test]
async fn a_checkpoint_at_the_first_user_record_of_an_aggregate_resumes_with_the_second() {
    let _serial = SERIAL.lock().await;
    let setup = setup("agg-first", 1).await;
    let shards = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap();
    let messages: Vec<DataMessage> = (0..3).map(|_| DataMessage::new()).collect();
    let mut aggregator = kinesis_common::kpl::Aggregator::new();
    for m in &messages {
        aggregator.add(&m.id.to_string(), None, &m.to_json());
    }
    let aggregate =
        testkit::put_record(&setup.kinesis, &setup.stream, "agg", aggregator.finish()).await;
    let (later, _, _) = setup.put("plain").await;
    setup.create_kcl_table().await;
    setup
        .put_item(kcl_item(
            &shards[0],
            None,
            1,
            aggregate.sequence_number(),
            0,
        ))
        .await;

    let mut worker = setup.worker("resumer");
    let expected: HashSet<String> = [
        messages[1].id.to_string(),
        messages[2].id.to_string(),
        later,
    ]
    .into_iter()
    .collect();
    let all = testkit::eventually(Duration::from_secs(30), || {
        ids(&worker).into_iter().collect::<HashSet<_>>() == expected
    })
    .await;
    assert!(all, "{}", worker.dump());
    stop(&mut worker);
    assert_eq!(ids(&worker).len(), 3, "{}", worker.dump());
}

/// From `LATEST`, a worker reads an idle shard and is stopped before any record arrives, so its
/// lease still says `LATEST`; what is written next must reach the worker that takes the lease
/// over, while what was written before the first worker began stays unread.
#[tokio::test]
async fn a_latest_lease_that_changes_hands_before_its_first_checkpoint_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let setup = setup("latest-move", 1).await;
    let (old, _, _) = setup.put("before").await;
    let latest = [("CONSUMER_INITIAL_POSITION", "LATEST")];
    let mut first = setup.worker_with("first", &latest);
    let reading = testkit::eventually(Duration::from_secs(60), || {
        !first.events("processing shard").is_empty()
    })
    .await;
    assert!(reading, "{}", first.dump());
    stop(&mut first);
    assert!(ids(&first).is_empty(), "{}", first.dump());

    let mut written = HashSet::new();
    for i in 0..10 {
        written.insert(setup.put(&format!("after-{i}")).await.0);
    }
    let mut second = setup.worker_with("second", &latest);
    let all = testkit::eventually(Duration::from_secs(30), || {
        written.is_subset(&ids(&second).into_iter().collect())
    })
    .await;
    assert!(all, "{}", second.dump());
    stop(&mut second);
    assert!(
        !ids(&second).contains(&old),
        "a record written before the application first read the shard was read"
    );
    assert_eq!(ids(&second).len(), 10, "{}", second.dump());
}

/// Two workers capped at one lease each, the parent's holder killed, then a split: the child
/// leases appear while the parent's lease is still held by the dead worker. The parent must be
/// taken first (a child waiting for it must not take the only slot), then the children.
#[tokio::test]
async fn capped_workers_take_the_parent_before_its_children_after_a_split() {
    let _serial = SERIAL.lock().await;
    let setup = setup("cap-split", 1).await;
    let parent = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap()[0]
        .shard_id()
        .to_string();
    let cap = [("CONSUMER_MAX_LEASES_PER_WORKER", "1")];
    let mut holder = setup.worker_with("holder", &cap);
    let held = testkit::eventually(Duration::from_secs(60), || {
        holder.held_leases().contains(&parent)
    })
    .await;
    assert!(held, "{}", holder.dump());
    let mut a = setup.worker_with("a", &cap);
    let mut b = setup.worker_with("b", &cap);
    let started = testkit::eventually(Duration::from_secs(60), || {
        !a.events("consumer started").is_empty() && !b.events("consumer started").is_empty()
    })
    .await;
    assert!(started, "{}", dump_all(&[&a, &b]));
    holder.signal("KILL");
    holder.wait_exit(Duration::from_secs(5));

    let mut sent = HashSet::new();
    for i in 0..5 {
        sent.insert(setup.put(&format!("before-split-{i}")).await.0);
    }
    testkit::split_in_half(&setup.kinesis, &setup.stream, &parent).await;
    for i in 0..10 {
        sent.insert(setup.put(&format!("after-split-{i}")).await.0);
    }
    let all = testkit::eventually(Duration::from_secs(60), || all_received(&[&a, &b], &sent)).await;
    assert!(all, "{}", save_logs("cap-split", &[&a, &b]));
    assert!(
        duplicates(&[&a, &b]).is_empty(),
        "{}",
        save_logs("cap-split", &[&a, &b])
    );
    stop(&mut a);
    stop(&mut b);
}

/// Settings that send a worker's lease-table calls through `proxy`, with call timeouts far
/// longer than the failover time: the worker must not depend on them to let go of a lease or
/// to stop.
fn through(proxy: &FaultProxy) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint()),
        ("DYNAMODB_ATTEMPT_TIMEOUT_MS", "30000".into()),
        ("DYNAMODB_CALL_TIMEOUT_MS", "30000".into()),
    ]
}

fn vars<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The lease table stops answering one worker (accepted connections, no answers) while Kinesis
/// still serves it. Within the failover time of its last renewal the worker stops processing
/// the shard on its own, before another worker can take it over, so the two never process the
/// shard at the same time; nothing is lost; and SIGTERM still ends the worker within 5 s.
#[tokio::test]
async fn a_holder_whose_lease_table_hangs_lets_go_within_the_failover_time() {
    let _serial = SERIAL.lock().await;
    let setup = setup("hang-holder", 1).await;
    let shard = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap()[0]
        .shard_id()
        .to_string();
    let proxy = FaultProxy::start(&setup.dynamo_endpoint);
    let settings = through(&proxy);
    let mut cut_off = setup.worker_with("cut-off", &vars(&settings));
    let mut producer = setup.producer(300, 40);
    let busy = testkit::eventually(Duration::from_secs(60), || {
        ids(&cut_off).len() >= 20 && cut_off.events("checkpoint").len() >= 3
    })
    .await;
    assert!(busy, "{}", cut_off.dump());

    proxy.set(vec![Rule::hang()]);
    let hung = Instant::now();
    let mut other = setup.worker("other");
    let let_go = testkit::eventually(Duration::from_secs(20), || {
        !cut_off.events("lease lost").is_empty()
    })
    .await;
    let let_go_after = hung.elapsed();
    assert!(let_go, "{}", cut_off.dump());
    eprintln!("lease given up {let_go_after:?} after the lease table began to hang");
    // The last renewal went out at most one renewal interval before the hang.
    assert!(
        let_go_after <= Duration::from_millis(FAILOVER_MS + 1500),
        "gave the lease up only after {let_go_after:?}"
    );
    let taken = testkit::eventually(Duration::from_secs(20), || {
        field(&other.events("lease acquired"), "shard_id").contains(&shard)
    })
    .await;
    assert!(taken, "{}", other.dump());

    // Never both at once: everything the cut-off worker logged came before the other worker
    // held the lease.
    let acquired_at = other.events("lease acquired")[0]["timestamp"]
        .as_str()
        .unwrap()
        .to_string();
    let late: Vec<String> = cut_off
        .events("record received")
        .iter()
        .filter_map(|e| e["timestamp"].as_str())
        .filter(|t| *t >= acquired_at.as_str())
        .map(str::to_string)
        .collect();
    assert!(
        late.is_empty(),
        "records processed by the old holder after {acquired_at}: {late:?}; {}",
        save_logs("hang-holder", &[&cut_off, &other])
    );

    let stopped = Instant::now();
    cut_off.signal("TERM");
    wait_ok(&mut cut_off, Duration::from_secs(5));
    eprintln!("stopped {:?} after SIGTERM", stopped.elapsed());

    wait_ok(&mut producer, Duration::from_secs(120));
    let sent = sent_ids(&producer);
    let complete = testkit::eventually(Duration::from_secs(60), || {
        all_received(&[&cut_off, &other], &sent)
    })
    .await;
    assert!(
        complete,
        "{}",
        save_logs("hang-holder", &[&cut_off, &other])
    );
    let allowed = after_last_checkpoint(&cut_off, &HashSet::from([shard.clone()]));
    let dups = duplicates(&[&cut_off, &other]);
    assert!(
        dups.is_subset(&allowed),
        "duplicates beyond the old holder's uncheckpointed records: {}",
        save_logs("hang-holder", &[&cut_off, &other])
    );
    stop(&mut other);
}

/// SIGTERM while every lease-table call hangs (renewals in flight): the worker still exits 0
/// within 5 s.
#[tokio::test]
async fn sigterm_stops_a_leased_worker_within_5_seconds_while_its_lease_table_hangs() {
    let _serial = SERIAL.lock().await;
    let setup = setup("hang-term", 2).await;
    let proxy = FaultProxy::start(&setup.dynamo_endpoint);
    let settings = through(&proxy);
    let mut worker = setup.worker_with("stuck", &vars(&settings));
    let holding = testkit::eventually(Duration::from_secs(60), || {
        worker.held_leases().len() == 2 && worker.events("processing shard").len() == 2
    })
    .await;
    assert!(holding, "{}", worker.dump());
    proxy.set(vec![Rule::hang()]);
    let before = proxy.requests("UpdateItem");
    let renewing = testkit::eventually(Duration::from_secs(10), || {
        proxy.requests("UpdateItem") >= before + 2
    })
    .await;
    assert!(renewing, "{}", worker.dump());
    let stopped = Instant::now();
    stop(&mut worker);
    eprintln!("stopped {:?} after SIGTERM", stopped.elapsed());
}

/// The stream is deleted under a leased worker: one error line naming the stream, the leases
/// released, exit 1, and no retry loop in between.
#[tokio::test]
async fn a_stream_deleted_under_a_leased_worker_ends_it_with_one_error_line_and_exit_1() {
    let _serial = SERIAL.lock().await;
    let setup = setup("deleted", 1).await;
    let mut worker = setup.worker("orphan");
    let (id, _, _) = setup.put("k").await;
    let read = testkit::eventually(Duration::from_secs(60), || ids(&worker).contains(&id)).await;
    assert!(read, "{}", worker.dump());
    let lines_before = worker.lines().len();
    setup
        .kinesis
        .delete_stream()
        .stream_name(&setup.stream)
        .send()
        .await
        .expect("DeleteStream");
    let code = worker
        .wait_exit(Duration::from_secs(30))
        .and_then(|s| s.code());
    assert_eq!(code, Some(1), "{}", worker.dump());
    let after: Vec<String> = worker.lines()[lines_before..].to_vec();
    let errors: Vec<&String> = after.iter().filter(|l| l.contains("\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "{}", worker.dump());
    assert!(
        errors[0].contains("consumer failed") && errors[0].contains(&setup.stream),
        "{}",
        errors[0]
    );
    assert_eq!(
        worker.events("lease released").len(),
        1,
        "{}",
        worker.dump()
    );
    assert!(after.len() <= 10, "{}", worker.dump());
}

/// A DynamoDB that is slow to answer at first (LocalStack's on its first start, say): the
/// `CreateTable` that times out is asked again within the table wait, and the worker starts.
#[tokio::test]
async fn a_create_table_that_times_out_is_tried_again() {
    let _serial = SERIAL.lock().await;
    let setup = setup("slow-create", 1).await;
    let proxy = FaultProxy::start(&setup.dynamo_endpoint);
    proxy.set(vec![Rule::hang().only(&["CreateTable"]).times(1)]);
    let endpoint = proxy.endpoint();
    let worker = setup.worker_with(
        "patient",
        &[
            ("AWS_ENDPOINT_URL_DYNAMODB", endpoint.as_str()),
            ("DYNAMODB_ATTEMPT_TIMEOUT_MS", "500"),
            ("DYNAMODB_CALL_TIMEOUT_MS", "1000"),
        ],
    );
    let mut producer = setup.producer(10, 50);
    let started = testkit::eventually(Duration::from_secs(60), || {
        !worker.events("lease acquired").is_empty() && ids(&worker).len() >= 10
    })
    .await;
    assert!(started, "{}", worker.dump());
    assert!(
        proxy.requests("CreateTable") >= 2,
        "CreateTable asked once only"
    );
    wait_ok(&mut producer, Duration::from_secs(30));
}

/// The first `record received` of `process`, and its last, as logged (RFC 3339, UTC, one
/// format: they order as strings).
fn reading_span(process: &ServiceProcess) -> Option<(String, String)> {
    let times = field(&process.events("record received"), "timestamp");
    Some((times.first()?.clone(), times.last()?.clone()))
}

/// Worker "a" holding the one shard of `setup` and reading the `count` records a producer sends
/// every `interval_ms`: returned once it read five.
async fn a_reading(
    setup: &Setup,
    count: usize,
    interval_ms: u64,
    extra: &[(&str, &str)],
) -> (ServiceProcess, ServiceProcess) {
    let a = setup.worker_with("a", extra);
    let held = until(Duration::from_secs(60), || async {
        setup.owned_by("a").await.len() == 1
    })
    .await;
    assert!(held, "{}", a.dump());
    let producer = setup.producer(count, interval_ms);
    let reading = testkit::eventually(Duration::from_secs(60), || ids(&a).len() >= 5).await;
    assert!(reading, "{}", a.dump());
    (a, producer)
}

/// Writes what another worker would to the one lease of `setup` while "a" holds it: `update`
/// (with `:a` = "a", `:b` = "b", `:two` = 2), conditional on "a" owning it. Returns its key.
async fn as_another_worker(setup: &Setup, update: &str) -> String {
    let shard = setup.owners().await.into_keys().next().unwrap();
    let mut request = setup
        .dynamo
        .update_item()
        .table_name(&setup.app)
        .key("leaseKey", AttributeValue::S(shard.clone()))
        .update_expression(update)
        .condition_expression("leaseOwner = :a")
        .expression_attribute_values(":a", AttributeValue::S("a".into()))
        .expression_attribute_values(":two", AttributeValue::N("2".into()));
    // DynamoDB refuses a value the expression does not use.
    if update.contains(":b") {
        request = request.expression_attribute_values(":b", AttributeValue::S("b".into()));
    }
    request.send().await.expect("UpdateItem");
    shard
}

/// Issue 19, defect 1. A lease stolen with a graceful handoff and released by the stealer
/// before the old holder finished (the stealer stopped with nobody to hand it to) is taken by
/// a third worker, which waits for the old holder to let go before it reads: the two never read
/// the shard at the same time. The old holder's lease table hangs from then on (fault proxy),
/// so it cannot learn of the handoff and keeps reading until its own timer stops it: the third
/// worker must wait that long.
#[tokio::test]
async fn a_lease_released_in_mid_handoff_is_not_read_by_two_workers_at_once() {
    let _serial = SERIAL.lock().await;
    let setup = setup("mid-handoff", 1).await;
    let proxy = FaultProxy::start(&setup.dynamo_endpoint);
    let settings = through(&proxy);
    let (mut a, mut producer) = a_reading(&setup, 150, 40, &vars(&settings)).await;
    proxy.set(vec![Rule::hang()]);
    // What the table shows after worker "b" stole the lease from "a" (owner b,
    // checkpointOwner a) and released it at once: no owner, checkpointOwner still naming a.
    as_another_worker(
        &setup,
        "SET checkpointOwner = :a ADD leaseCounter :two REMOVE leaseOwner",
    )
    .await;
    let mut c = setup.worker("c");

    wait_ok(&mut producer, Duration::from_secs(60));
    let sent = sent_ids(&producer);
    let complete =
        testkit::eventually(Duration::from_secs(60), || all_received(&[&a, &c], &sent)).await;
    assert!(complete, "{}", dump_all(&[&a, &c]));
    for waited in [
        "waiting for the previous owner to hand the shard over",
        "handoff timed out, starting anyway",
    ] {
        assert_eq!(
            c.events(waited).len(),
            1,
            "{waited}\n{}",
            dump_all(&[&a, &c])
        );
    }
    assert_eq!(
        field(&a.events("lease lost"), "reason"),
        ["not renewed within the failover time"],
        "{}",
        a.dump()
    );
    let (_, a_last) = reading_span(&a).unwrap();
    let (c_first, _) = reading_span(&c).expect("c read the shard");
    assert!(
        a_last < c_first,
        "a read until {a_last}, c from {c_first}\n{}",
        dump_all(&[&a, &c])
    );
    proxy.clear();
    stop(&mut a);
    stop(&mut c);
}

/// Issue 19, defect 3b. Two live processes started with one `CONSUMER_WORKER_ID` (a restart
/// overlapping the old process, a copied configuration): the second never takes a lease the
/// first is reading, says so in one error line naming the id, and no record is read twice.
#[tokio::test]
async fn two_processes_with_one_worker_id_never_read_a_shard_both_and_one_says_so() {
    let _serial = SERIAL.lock().await;
    let setup = setup("twins", 2).await;
    let mut first = setup.worker("twin");
    let held = until(Duration::from_secs(60), || async {
        setup.owned_by("twin").await.len() == 2
    })
    .await;
    assert!(held, "{}", first.dump());
    let mut second = setup.worker("twin");
    let mut producer = setup.producer(150, 20);
    wait_ok(&mut producer, Duration::from_secs(60));
    let sent = sent_ids(&producer);
    let complete = testkit::eventually(Duration::from_secs(60), || {
        all_received(&[&first, &second], &sent)
    })
    .await;
    assert!(complete, "{}", dump_all(&[&first, &second]));
    let said = testkit::eventually(Duration::from_secs(30), || {
        !second
            .events("another live worker uses this worker id: give every worker its own CONSUMER_WORKER_ID (leases it seems to hold are not taken until they expire)")
            .is_empty()
    })
    .await;
    assert!(said, "{}", dump_all(&[&first, &second]));
    let reported = second.events("another live worker uses this worker id: give every worker its own CONSUMER_WORKER_ID (leases it seems to hold are not taken until they expire)");
    assert_eq!(reported.len(), 1, "one line");
    assert_eq!(reported[0]["worker_id"], "twin");
    assert!(
        duplicates(&[&first, &second]).is_empty(),
        "{}",
        dump_all(&[&first, &second])
    );
    stop(&mut first);
    stop(&mut second);
}

/// Issue 19, defect 4. SIGTERM while the first takes are in flight and DynamoDB has applied
/// them but not yet answered (the fault proxy holds every `UpdateItem` answer for 500 ms): the
/// worker still hears the answers (within its 1 s grace) and gives those leases back before it
/// exits, so they are not left owned by a stopped worker until the failover time.
#[tokio::test]
async fn takes_answered_after_sigterm_are_given_back_before_the_worker_exits() {
    let _serial = SERIAL.lock().await;
    let setup = setup("late-takes", 2).await;
    let proxy = FaultProxy::start(&setup.dynamo_endpoint);
    proxy.set(vec![
        Rule::delay(Duration::from_millis(500)).only(&["UpdateItem"])
    ]);
    let settings = through(&proxy);
    let mut worker = setup.worker_with("late", &vars(&settings));
    let taking = testkit::eventually(Duration::from_secs(60), || {
        proxy.requests("UpdateItem") >= 2
    })
    .await;
    assert!(taking, "{}", worker.dump());
    assert!(
        worker.events("lease acquired").is_empty(),
        "answered already"
    );
    stop(&mut worker);
    let owners = setup.owners().await;
    assert_eq!(owners.len(), 2);
    assert!(
        owners.values().all(Option::is_none),
        "left owned by a stopped worker: {owners:?}\n{}",
        worker.dump()
    );
    assert_eq!(
        worker.events("lease released").len(),
        2,
        "{}",
        worker.dump()
    );
}

/// Issue 19, defect 3a. A lease stolen from "a" with a graceful handoff and handed straight
/// back to "a" (the stealer stopped before "a" finished): "a" must not take the item for its own
/// write and keep reading with `checkpointOwner` naming itself (every later steal would fail
/// and every handoff wait its whole timeout). It lets the shard go, takes it up again, and
/// `checkpointOwner` is gone; nothing is lost.
#[tokio::test]
async fn a_lease_handed_back_in_mid_handoff_does_not_keep_checkpoint_owner() {
    let _serial = SERIAL.lock().await;
    let setup = setup("handed-back", 1).await;
    let (mut a, mut producer) = a_reading(&setup, 100, 50, &[]).await;
    // What worker "b" writes: a steal with a handoff, then, stopping, a hand-over back to "a".
    let shard = as_another_worker(
        &setup,
        "SET checkpointOwner = :a, handedOverBy = :b ADD leaseCounter :two",
    )
    .await;
    wait_ok(&mut producer, Duration::from_secs(60));
    let sent = sent_ids(&producer);
    let complete =
        testkit::eventually(Duration::from_secs(60), || all_received(&[&a], &sent)).await;
    assert!(complete, "{}", a.dump());
    let item = setup
        .items()
        .await
        .into_iter()
        .find(|i| s(i, "leaseKey").as_deref() == Some(shard.as_str()))
        .unwrap();
    assert_eq!(s(&item, "leaseOwner").as_deref(), Some("a"), "{item:?}");
    assert!(
        !item.contains_key("checkpointOwner"),
        "{item:?}\n{}",
        a.dump()
    );
    stop(&mut a);
}
