//! The aggregating producer binary while its stream is split under load, against kinesis-mock:
//! no user record is acknowledged inside an aggregate stored on a shard whose hash key range
//! does not hold the record's hash key, and every acknowledged record can be read exactly once
//! by a consumer that, like the Java KCL, skips an aggregate with a member outside its shard's
//! range.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use kinesis_common::kpl;
use kinesis_common::message::DataMessage;
use testkit::{Kind, ServiceProcess};

fn producer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_producer"))
}

/// Where one copy of a user record is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Copy {
    shard: String,
    sequence_number: String,
    sub_sequence_number: Option<u64>,
    /// In an aggregate with a member outside the shard's range: the Java KCL (and this
    /// consumer) skip the whole aggregate.
    in_misplaced_aggregate: bool,
}

/// Every copy of every `DataMessage` in the stream, by message id.
async fn stored_copies(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> HashMap<String, Vec<Copy>> {
    let ranges = testkit::shard_ranges(client, stream).await;
    let mut copies: HashMap<String, Vec<Copy>> = HashMap::new();
    for (shard, record) in testkit::read_stream(client, stream).await {
        let id = |data: &[u8]| {
            DataMessage::from_json(data)
                .expect("the stream holds DataMessages")
                .id
                .to_string()
        };
        let sequence_number = record.sequence_number().to_string();
        let Some(aggregate) = kpl::deaggregate(record.data().as_ref()) else {
            copies
                .entry(id(record.data().as_ref()))
                .or_default()
                .push(Copy {
                    shard,
                    sequence_number,
                    sub_sequence_number: None,
                    in_misplaced_aggregate: false,
                });
            continue;
        };
        let misplaced = kpl::is_misplaced(Some(ranges[&shard]), &aggregate);
        for (i, member) in aggregate.iter().enumerate() {
            copies.entry(id(member.data)).or_default().push(Copy {
                shard: shard.clone(),
                sequence_number: sequence_number.clone(),
                sub_sequence_number: Some(i as u64),
                in_misplaced_aggregate: misplaced,
            });
        }
    }
    copies
}

/// The reproduction: 10 records every 10 ms, aggregated with a linger of 200 ms, while
/// a 2-shard stream is split twice. Before the producer checked where its aggregates landed,
/// several hundred of the 4,000 records were acknowledged inside aggregates stored on the wrong
/// child.
#[tokio::test]
async fn aggregates_split_under_load_acknowledge_no_record_on_a_shard_it_does_not_hash_to() {
    const COUNT: usize = 4000;
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("producer-split");
    testkit::create_stream(&client, &stream, 2).await;
    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
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
    // Split one shard while records flow, then the other, each with records still to come.
    for (after, shards) in [(COUNT / 5, 1), (COUNT / 2, 1)] {
        let flowing = testkit::eventually(Duration::from_secs(120), || {
            producer.events("record sent").len() >= after
        })
        .await;
        assert!(flowing, "{}", producer.dump());
        testkit::split_open_shards(&client, &stream, shards).await;
    }
    producer.expect_exit(Duration::from_secs(180), 0);

    let sent = producer.events("record sent");
    assert_eq!(sent.len(), COUNT, "{}", producer.dump());
    let copies = stored_copies(&client, &stream).await;
    let misplaced_aggregate_members = copies
        .values()
        .flatten()
        .filter(|c| c.in_misplaced_aggregate)
        .count();
    assert!(
        misplaced_aggregate_members > 0,
        "no aggregate landed on a shard its members do not all hash to: the splits did not \
         test anything"
    );

    let (mut acked_misplaced, mut acked_elsewhere, mut lost, mut duplicated) = (0, 0, 0, 0);
    for event in &sent {
        let id = event["id"].as_str().expect("id");
        let acked = Copy {
            shard: event["shard_id"].as_str().expect("shard_id").to_string(),
            sequence_number: event["sequence_number"].as_str().expect("seq").to_string(),
            sub_sequence_number: event["sub_sequence_number"].as_u64(),
            in_misplaced_aggregate: false,
        };
        let stored = copies.get(id).map(Vec::as_slice).unwrap_or_default();
        match stored.iter().find(|c| {
            (&c.shard, &c.sequence_number, c.sub_sequence_number)
                == (
                    &acked.shard,
                    &acked.sequence_number,
                    acked.sub_sequence_number,
                )
        }) {
            Some(c) if c.in_misplaced_aggregate => acked_misplaced += 1,
            Some(_) => {}
            None => acked_elsewhere += 1,
        }
        match stored.iter().filter(|c| !c.in_misplaced_aggregate).count() {
            0 => lost += 1,
            1 => {}
            _ => duplicated += 1,
        }
    }
    assert_eq!(
        (acked_misplaced, acked_elsewhere, lost, duplicated),
        (0, 0, 0, 0),
        "of {COUNT} records acknowledged: (inside an aggregate on a shard a member does not hash \
         to, at a position that does not hold it, with no readable copy, with more than one \
         readable copy); {misplaced_aggregate_members} members stored in misplaced aggregates"
    );
}

/// Order per partition key across a split with the rate limiter holding records back: one key,
/// handed over at twice the rate the limiter lets through, so a backlog waits under the parent
/// when the stream is split. The producer learns the split from a record that lands on a
/// child, and lists the shards again (at most every 5 s, so the feed lasts longer than that).
/// Before the held-back records were regrouped by the new map, records handed over after that
/// went out on the child at once, ahead of the backlog still held under the parent.
#[tokio::test]
async fn one_keys_records_are_stored_in_the_order_handed_over_across_a_split_under_the_rate_limit()
{
    const COUNT: usize = 300;
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("producer-order");
    let parent = testkit::create_single_shard_stream(&client, &stream).await;
    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("PRODUCER_COUNT", &COUNT.to_string()),
                // 40 a second for 7.5 s against a limit of 20 a second (2 %).
                ("PRODUCER_INTERVAL_MS", "25"),
                ("PRODUCER_PARTITION_KEY", "one-key"),
                ("PRODUCER_SHARD_RATE_LIMIT", "2"),
                ("PRODUCER_MAX_IN_FLIGHT", "1"),
                ("PRODUCER_RECORD_TTL_MS", "120000"),
            ],
        ),
    );
    let flowing = testkit::eventually(Duration::from_secs(60), || {
        producer.events("record sent").len() >= 20
    })
    .await;
    assert!(flowing, "{}", producer.dump());
    testkit::split_in_half(&client, &stream, &parent).await;
    producer.expect_exit(Duration::from_secs(120), 0);
    let sent = producer.events("record sent");
    assert_eq!(sent.len(), COUNT, "{}", producer.dump());
    assert!(
        sent.iter()
            .any(|e| e["shard_id"].as_str() != Some(parent.as_str())),
        "nothing was written after the split: {}",
        producer.dump()
    );

    // The parent's records, then the child's (one key: one child), each by sequence number.
    let mut stored: Vec<(bool, String, DataMessage)> = testkit::read_stream(&client, &stream)
        .await
        .into_iter()
        .map(|(shard, r)| {
            let message = DataMessage::from_json(r.data().as_ref()).expect("a DataMessage");
            (shard != parent, r.sequence_number().to_string(), message)
        })
        .collect();
    // Sequence numbers are decimal numbers too long for a u128: compare by length first.
    stored.sort_by(|(c1, s1, _), (c2, s2, _)| (c1, s1.len(), s1).cmp(&(c2, s2.len(), s2)));
    assert_eq!(stored.len(), COUNT);
    let created: Vec<_> = stored.iter().map(|(_, _, m)| m.created_on).collect();
    let out_of_order = created.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(
        out_of_order, 0,
        "records stored before a record handed over earlier: {out_of_order}"
    );
}
