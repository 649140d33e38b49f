//! Leases that move fast and hand over cleanly (issue 11, part 3), across real consumer
//! processes on kinesis-mock and dynalite (or DynamoDB Local with `TEST_DYNAMODB`):
//!
//! - a joining worker takes its fair share within two failover intervals, and then nothing
//!   moves;
//! - SIGTERM of one of two workers: the other holds every lease within about a second (the
//!   stopping worker hands its leases over, the other finds them through the owner index);
//! - a worker joining two others while records flow: graceful handoffs, no duplicate, nothing
//!   lost;
//! - lease cleanup: a split parent's lease is deleted once its children are read, and not
//!   created again; a lease of a shard that does not exist is deleted.
//!
//! Each test starts its own kinesis-mock with a shard limit fit for many shards. The tests run
//! one at a time (they measure times on a 2-core machine).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use support::*;
use testkit::{field, Emulator, Kind, ServiceProcess};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kinesis_mock() -> Emulator {
    Emulator::start_on(
        Kind::KinesisMock,
        testkit::free_port(),
        &[("SHARD_LIMIT", "1000")],
    )
}

fn load(owners: &BTreeMap<String, Option<String>>) -> BTreeMap<String, usize> {
    let mut load = BTreeMap::new();
    for owner in owners.values().flatten() {
        *load.entry(owner.clone()).or_default() += 1;
    }
    load
}

/// Every worker holds what the table says it owns, and the loads are the ones given.
async fn settled(setup: &Setup, workers: &[(&str, &ServiceProcess)], loads: &[usize]) -> bool {
    let owners = setup.owners().await;
    let mut got: Vec<usize> = workers
        .iter()
        .map(|(id, _)| {
            owners
                .values()
                .filter(|o| o.as_deref() == Some(*id))
                .count()
        })
        .collect();
    got.sort();
    let mut want = loads.to_vec();
    want.sort();
    got == want
        && workers.iter().all(|(id, p)| {
            p.held_leases()
                == owners
                    .iter()
                    .filter(|(_, o)| o.as_deref() == Some(*id))
                    .map(|(k, _)| k.clone())
                    .collect::<HashSet<_>>()
        })
}

#[tokio::test]
async fn a_joining_worker_takes_its_fair_share_within_two_failover_intervals_then_nothing_moves() {
    let _serial = SERIAL.lock().await;
    let kinesis = kinesis_mock();
    let shards = 40;
    let setup = Setup::new("join", shards, &kinesis).await;
    let first = setup.worker("first");
    let alone = until(Duration::from_secs(60), || async {
        settled(&setup, &[("first", &first)], &[40]).await
    })
    .await;
    assert!(alone, "{:?}\n{}", setup.owners().await, first.dump());

    let joined_at = Instant::now();
    let second = setup.worker("second");
    let fair = until(Duration::from_secs(30), || async {
        settled(&setup, &[("first", &first), ("second", &second)], &[20, 20]).await
    })
    .await;
    let took = joined_at.elapsed();
    assert!(
        fair,
        "{:?}\n{}",
        load(&setup.owners().await),
        dump_all(&[&first, &second])
    );
    eprintln!("a worker joining one on {shards} shards holds its fair share after {took:?}");
    // The goal is two failover intervals from the process start, which includes its own
    // start-up (`scale_bench` measures it); the test allows four, so that a loaded 2-core
    // machine (DynamoDB Local's JVM beside it under `scripts/interop.sh`) cannot break it.
    assert!(
        took <= Duration::from_millis(4 * FAILOVER_MS),
        "took {took:?}"
    );

    // Settled, not passing through: no lease moves for three failover intervals.
    let acquired = first.events("lease acquired").len() + second.events("lease acquired").len();
    let owners = setup.owners().await;
    tokio::time::sleep(Duration::from_millis(3 * FAILOVER_MS)).await;
    assert_eq!(setup.owners().await, owners);
    assert_eq!(
        first.events("lease acquired").len() + second.events("lease acquired").len(),
        acquired,
        "{}",
        dump_all(&[&first, &second])
    );
    // The stolen leases went through a graceful handoff.
    assert_eq!(second.events("shard handed over").len(), 20);
    assert_eq!(first.events("lease handed off").len(), 20);
    let mut first = first;
    let mut second = second;
    stop(&mut first);
    stop(&mut second);
}

#[tokio::test]
async fn sigterm_of_one_of_two_workers_hands_its_leases_to_the_other_within_two_seconds() {
    let _serial = SERIAL.lock().await;
    let kinesis = kinesis_mock();
    let shards = 40;
    let setup = Setup::new("term2s", shards, &kinesis).await;
    // The service's default failover time: scans every 5 s, so only the handover makes it fast.
    let vars = [("CONSUMER_FAILOVER_MS", "10000")];
    let mut leaving = setup.worker_with("leaving", &vars);
    let staying = setup.worker_with("staying", &vars);
    let even = until(Duration::from_secs(60), || async {
        settled(
            &setup,
            &[("leaving", &leaving), ("staying", &staying)],
            &[20, 20],
        )
        .await
    })
    .await;
    assert!(even, "{:?}", load(&setup.owners().await));

    let signalled = Instant::now();
    leaving.signal("TERM");
    let all = until(Duration::from_secs(15), || async {
        settled(&setup, &[("staying", &staying)], &[40]).await
    })
    .await;
    let took = signalled.elapsed();
    wait_ok(&mut leaving, Duration::from_secs(5));
    assert!(
        all,
        "{:?}\n{}",
        load(&setup.owners().await),
        dump_all(&[&leaving, &staying])
    );
    if took > Duration::from_millis(3000) {
        eprintln!("{}", save_logs("term2s", &[&leaving, &staying]));
    }
    eprintln!(
        "SIGTERM of one of two workers on {shards} shards: the other holds all after {took:?}"
    );
    assert_eq!(leaving.events("lease handed over").len(), 20);
    // The goal is 2 s; the margin is for a loaded 2-core machine (polled every 200 ms).
    assert!(took <= Duration::from_millis(3000), "took {took:?}");
    let mut staying = staying;
    stop(&mut staying);
}

#[tokio::test]
async fn a_worker_joining_two_others_while_records_flow_causes_no_duplicate_and_no_loss() {
    let _serial = SERIAL.lock().await;
    let kinesis = kinesis_mock();
    let setup = Setup::new("handoff", 6, &kinesis).await;
    let mut a = setup.worker("a");
    let mut b = setup.worker("b");
    let even = until(Duration::from_secs(60), || async {
        settled(&setup, &[("a", &a), ("b", &b)], &[3, 3]).await
    })
    .await;
    assert!(even, "{:?}", load(&setup.owners().await));

    // About 50 records a second for 12 seconds; the third worker joins in the middle.
    let mut producer = setup.producer(600, 20);
    let flowing = testkit::eventually(Duration::from_secs(60), || {
        ids(&a).len() + ids(&b).len() >= 100
    })
    .await;
    assert!(flowing, "{}", dump_all(&[&a, &b, &producer]));
    let mut c = setup.worker("c");
    let joined = until(Duration::from_secs(30), || async {
        settled(&setup, &[("a", &a), ("b", &b), ("c", &c)], &[2, 2, 2]).await
    })
    .await;
    assert!(joined, "{:?}", load(&setup.owners().await));
    let handed = testkit::eventually(Duration::from_secs(30), || {
        c.events("shard handed over").len() == 2
    })
    .await;
    assert!(handed, "{}", dump_all(&[&a, &b, &c]));

    wait_ok(&mut producer, Duration::from_secs(120));
    let sent = sent_ids(&producer);
    assert_eq!(sent.len(), 600);
    let complete = testkit::eventually(Duration::from_secs(60), || {
        all_received(&[&a, &b, &c], &sent)
    })
    .await;
    assert!(complete, "{}", save_logs("handoff", &[&a, &b, &c]));
    let dups = duplicates(&[&a, &b, &c]);
    assert!(
        dups.is_empty(),
        "{} duplicates after graceful handoffs: {}",
        dups.len(),
        save_logs("handoff", &[&a, &b, &c])
    );
    assert!(c.events("handoff timed out, starting anyway").is_empty());
    for w in [&mut a, &mut b, &mut c] {
        stop(w);
    }
}

#[tokio::test]
async fn a_split_parents_lease_is_deleted_once_its_children_are_read_and_not_created_again() {
    let _serial = SERIAL.lock().await;
    let kinesis = kinesis_mock();
    let setup = Setup::new("cleanup", 1, &kinesis).await;
    let parent = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream)
        .await
        .unwrap()[0]
        .shard_id()
        .to_string();
    let vars = [
        ("CONSUMER_LEASE_CLEANUP_MS", "500"),
        ("CONSUMER_COMPLETED_LEASE_CLEANUP_MS", "1000"),
        ("CONSUMER_GARBAGE_LEASE_CLEANUP_MS", "1000"),
    ];
    let mut worker = setup.worker_with("solo", &vars);
    let mut producer = setup.producer(200, 40);
    let some = testkit::eventually(Duration::from_secs(60), || ids(&worker).len() >= 20).await;
    assert!(some, "{}", worker.dump());
    // A lease for a shard the stream does not have (trimmed long ago): garbage.
    let mut gone = HashMap::new();
    for (k, v) in [
        ("leaseKey", AttributeValue::S("shardId-000000009999".into())),
        ("leaseCounter", AttributeValue::N("1".into())),
        ("checkpoint", AttributeValue::S("SHARD_END".into())),
        ("checkpointSubSequenceNumber", AttributeValue::N("0".into())),
        (
            "ownerSwitchesSinceCheckpoint",
            AttributeValue::N("0".into()),
        ),
    ] {
        gone.insert(k.to_string(), v);
    }
    setup
        .dynamo
        .put_item()
        .table_name(&setup.app)
        .set_item(Some(gone))
        .send()
        .await
        .expect("PutItem");
    testkit::split_in_half(&setup.kinesis, &setup.stream, &parent).await;

    let keys = || async {
        setup
            .items()
            .await
            .iter()
            .filter_map(|i| s(i, "leaseKey"))
            .collect::<HashSet<String>>()
    };
    let cleaned = until(Duration::from_secs(60), || async {
        let keys = keys().await;
        !keys.contains(&parent) && !keys.contains("shardId-000000009999") && keys.len() == 2
    })
    .await;
    assert!(cleaned, "{:?}\n{}", keys().await, worker.dump());
    // The worker logs a deletion once DynamoDB has answered it, and its log reaches this test
    // through a pipe: the line can come a moment after the table shows the lease gone.
    let reasons = || -> HashMap<String, String> {
        worker
            .events("lease deleted")
            .iter()
            .map(|e| {
                (
                    e["shard_id"].as_str().unwrap_or_default().to_string(),
                    e["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let logged = testkit::eventually(Duration::from_secs(10), || {
        let reasons = reasons();
        reasons.contains_key(&parent) && reasons.contains_key("shardId-000000009999")
    })
    .await;
    assert!(logged, "{:?}\n{}", reasons(), worker.dump());
    let reasons = reasons();
    assert_eq!(reasons.get(&parent).map(String::as_str), Some("completed"));
    assert_eq!(
        reasons.get("shardId-000000009999").map(String::as_str),
        Some("shard no longer exists")
    );
    // Shard sync runs every second: the parent, still listed, does not get a lease again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!keys().await.contains(&parent));
    assert!(
        field(&worker.events("lease created"), "shard_id")
            .iter()
            .filter(|s| **s == parent)
            .count()
            <= 1
    );

    wait_ok(&mut producer, Duration::from_secs(120));
    let sent = sent_ids(&producer);
    assert_eq!(sent.len(), 200);
    let complete =
        testkit::eventually(Duration::from_secs(60), || all_received(&[&worker], &sent)).await;
    assert!(complete, "{}", worker.dump());
    assert!(duplicates(&[&worker]).is_empty(), "{}", worker.dump());
    stop(&mut worker);
}

/// A lease handed to a worker (`handedOverBy`) in the middle of a handoff whose old holder
/// never finishes (here `checkpointOwner` names a worker that does not exist): the worker
/// waits, never less than the failover time, then removes `checkpointOwner` itself and reads
/// the shard.
#[tokio::test]
async fn a_handoff_that_never_finishes_times_out_no_sooner_than_the_failover_time() {
    let _serial = SERIAL.lock().await;
    let kinesis = kinesis_mock();
    let setup = Setup::new("timeout", 1, &kinesis).await;
    let mut first = setup.worker("first");
    let held = until(Duration::from_secs(60), || async {
        setup.owned_by("first").await.len() == 1
    })
    .await;
    assert!(held, "{}", first.dump());
    stop(&mut first);
    let shard = setup.owners().await.into_keys().next().unwrap();
    setup
        .dynamo
        .update_item()
        .table_name(&setup.app)
        .key("leaseKey", AttributeValue::S(shard.clone()))
        // As a stopping worker hands a lease over (`handedOverBy`), in mid-handoff.
        .update_expression("SET leaseOwner = :new, checkpointOwner = :old, handedOverBy = :by")
        .expression_attribute_values(":new", AttributeValue::S("heir".into()))
        .expression_attribute_values(":old", AttributeValue::S("ghost".into()))
        .expression_attribute_values(":by", AttributeValue::S("first".into()))
        .send()
        .await
        .expect("UpdateItem");
    let (id, _, _) = setup.put("k").await;

    let started = Instant::now();
    let mut heir = setup.worker_with("heir", &[("CONSUMER_HANDOFF_TIMEOUT_MS", "1000")]);
    let read = testkit::eventually(Duration::from_secs(30), || ids(&heir).contains(&id)).await;
    let took = started.elapsed();
    assert!(read, "{}", heir.dump());
    assert_eq!(
        heir.events("waiting for the previous owner to hand the shard over")
            .len(),
        1,
        "{}",
        heir.dump()
    );
    assert_eq!(
        heir.events("handoff timed out, starting anyway").len(),
        1,
        "{}",
        heir.dump()
    );
    // The timeout asked for is 1 s, but never less than the failover time.
    assert!(took >= Duration::from_millis(FAILOVER_MS), "took {took:?}");
    let item = setup
        .items()
        .await
        .into_iter()
        .find(|i| s(i, "leaseKey").as_deref() == Some(shard.as_str()))
        .unwrap();
    assert!(!item.contains_key("checkpointOwner"), "{item:?}");
    assert_eq!(s(&item, "leaseOwner").as_deref(), Some("heir"));
    stop(&mut heir);
}
