//! The `Producer` library as a program uses it, in the test process, against kinesis-mock: bad
//! records are refused when they are handed over, alone, with an error that says why, and
//! never take other records down with them or block their caller; records handed over tagged
//! get their outcomes in batches.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kinesis_producer::{Producer, ProducerConfig, ProducerRecord, SendError};
use testkit::Kind;

/// Explicit hash keys Kinesis refuses: empty, not a number, a leading zero, 2^128.
const BAD_HASH_KEYS: [&str; 4] = ["", "abc", "0123", "340282366920938463463374607431768211456"];

/// What kinesis-mock does with such a key, which is why the producer must refuse it before it
/// joins a call: the whole `PutRecords` call fails, not only that entry.
#[tokio::test]
async fn kinesis_refuses_a_whole_call_for_one_bad_explicit_hash_key() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("lib-ehk-call");
    testkit::create_stream(&client, &stream, 1).await;
    for key in BAD_HASH_KEYS {
        let entry = |key: Option<&str>| {
            PutRecordsRequestEntry::builder()
                .partition_key("k")
                .set_explicit_hash_key(key.map(str::to_string))
                .data(Blob::new("x"))
                .build()
                .unwrap()
        };
        let result = client
            .put_records()
            .stream_name(&stream)
            .records(entry(None))
            .records(entry(Some(key)))
            .send()
            .await;
        assert!(result.is_err(), "{key:?}: {result:?}");
    }
    assert!(
        testkit::read_stream(&client, &stream).await.is_empty(),
        "not even the good entries were stored"
    );
}

async fn bad_hash_keys_fail_alone(aggregation: bool) {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("lib-ehk");
    testkit::create_stream(&client, &stream, 2).await;
    let config = ProducerConfig {
        // Long enough for every record below to share one call.
        linger: Duration::from_millis(500),
        aggregation,
        ..ProducerConfig::new(&stream)
    };
    let (producer, flusher) = Producer::start(client.clone(), config).expect("valid");
    let mut good = Vec::new();
    let mut refused = Vec::new();
    for (i, key) in BAD_HASH_KEYS.iter().enumerate() {
        good.push(
            producer
                .enqueue(ProducerRecord::new(format!("good-{i}"), "good"))
                .await
                .expect("a good record is taken"),
        );
        let mut bad = ProducerRecord::new(format!("bad-{i}"), "bad");
        bad.explicit_hash_key = Some(key.to_string());
        let outcome = match producer.enqueue(bad).await {
            Ok(receipt) => receipt.await.map(|_| ()),
            Err(err) => Err(err),
        };
        refused.push((key, outcome));
    }
    let mut valid = ProducerRecord::new("any", "routed by its explicit hash key");
    valid.explicit_hash_key = Some("0".into());
    good.push(producer.enqueue(valid).await.expect("0 is a valid key"));
    for (key, outcome) in refused {
        match outcome {
            Err(SendError::Invalid(why)) => {
                assert!(why.contains("explicit hash key"), "{key:?}: {why}")
            }
            other => panic!("{key:?}: refused at hand-over expected, got {other:?}"),
        }
    }
    for receipt in good {
        receipt.await.expect("the good records are sent");
    }
    drop(producer);
    assert_eq!(flusher.finish(Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn a_record_with_an_explicit_hash_key_kinesis_refuses_fails_alone_at_hand_over() {
    bad_hash_keys_fail_alone(false).await;
}

#[tokio::test]
async fn an_aggregated_record_with_a_bad_explicit_hash_key_fails_alone_at_hand_over() {
    bad_hash_keys_fail_alone(true).await;
}

/// A record the byte bound can never make room for is refused at once rather than left
/// waiting for room forever.
#[tokio::test]
async fn a_record_larger_than_the_byte_bound_is_refused_not_waited_for() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("lib-big");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    let config = ProducerConfig {
        max_buffered_bytes: 3000,
        ..ProducerConfig::new(&stream)
    };
    let (producer, flusher) = Producer::start(emu.kinesis(), config).expect("valid");
    // 2,500 bytes and the 1 KiB each record counts for its bookkeeping: over 3,000.
    let big = ProducerRecord::new("k", vec![b'x'; 2500]);
    match tokio::time::timeout(Duration::from_secs(10), producer.enqueue(big)).await {
        Ok(Err(SendError::Invalid(why))) => assert!(why.contains("3000"), "{why}"),
        Ok(other) => panic!("refused expected, got {:?}", other.map(|_| "a receipt")),
        Err(_) => panic!("enqueue still waiting after 10 s for room that can never be made"),
    }
    producer
        .send(ProducerRecord::new("k", vec![b'x'; 900]))
        .await
        .expect("a record that fits is sent");
    drop(producer);
    assert_eq!(flusher.finish(Duration::from_secs(10)).await, 0);
}

/// Records handed over tagged come back once each, with their tag, in batches (a call's
/// records together) that carry what a receipt would; and an outcome batch nobody dropped yet
/// holds its records' room in the buffer, so a caller that does not read outcomes is held
/// back rather than left to pile them up.
#[tokio::test]
async fn tagged_records_come_back_in_batches_that_hold_their_room_until_dropped() {
    const COUNT: u64 = 300;
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("lib-tagged");
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    let config = ProducerConfig {
        aggregation: true,
        linger: Duration::from_millis(50),
        max_buffered_records: COUNT as usize,
        ..ProducerConfig::new(&stream)
    };
    let (producer, flusher, mut outcomes) =
        Producer::start_with_outcomes(emu.kinesis(), config).expect("valid");
    for tag in 0..COUNT {
        producer
            .enqueue_tagged(ProducerRecord::new(format!("key-{tag}"), "data"), tag)
            .await
            .expect("taken");
    }
    // The buffer is full until the batches are dropped: one more record waits.
    let mut kept = Vec::new();
    let mut tags = Vec::new();
    while tags.len() < COUNT as usize {
        let batch = tokio::time::timeout(Duration::from_secs(30), outcomes.recv())
            .await
            .expect("outcomes within 30 s")
            .expect("the producer still runs");
        for (tag, result) in batch.outcomes() {
            let ack = result.as_ref().expect("acknowledged");
            assert!(ack.sub_sequence_number.is_some(), "aggregated: {ack:?}");
            tags.push(*tag);
        }
        kept.push(batch);
    }
    assert!(
        kept.len() < COUNT as usize,
        "{} batches for {COUNT} records",
        kept.len()
    );
    tags.sort_unstable();
    assert_eq!(tags, (0..COUNT).collect::<Vec<_>>(), "each tag once");
    {
        let extra = producer.enqueue_tagged(ProducerRecord::new("extra", "data"), COUNT);
        tokio::pin!(extra);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut extra)
                .await
                .is_err(),
            "the room of records whose outcome batch is still held was given back"
        );
        drop(kept);
        tokio::time::timeout(Duration::from_secs(10), extra)
            .await
            .expect("room once the batches are dropped")
            .expect("taken");
    }
    // A receipt still works on the same producer.
    producer
        .send(ProducerRecord::new("receipt", "data"))
        .await
        .expect("sent");
    drop(producer);
    assert_eq!(flusher.finish(Duration::from_secs(10)).await, 0);
    let last = outcomes.recv().await.expect("the extra record's outcome");
    assert_eq!(last.outcomes()[0].0, COUNT);
    assert!(
        outcomes.recv().await.is_none(),
        "the stream ends with the producer"
    );
}

/// A producer started without an outcome stream refuses tagged records instead of losing
/// their outcomes.
#[tokio::test]
async fn tagged_records_need_a_producer_started_with_outcomes() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("lib-untagged");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    let (producer, flusher) =
        Producer::start(emu.kinesis(), ProducerConfig::new(&stream)).expect("valid");
    match producer
        .enqueue_tagged(ProducerRecord::new("k", "data"), 1)
        .await
    {
        Err(SendError::Invalid(why)) => assert!(why.contains("start_with_outcomes"), "{why}"),
        other => panic!("refused expected, got {other:?}"),
    }
    drop(producer);
    assert_eq!(flusher.finish(Duration::from_secs(10)).await, 0);
}

/// A batch handed over at once: each valid record comes back once with its tag; a record
/// `enqueue` would refuse is refused alone, named by its tag; a batch larger than the buffer
/// is refused whole at once rather than left waiting for room that can never be made; and a
/// batch hand-over dropped while it waits for room hands nothing over.
#[tokio::test]
async fn a_tagged_batch_is_handed_over_whole_but_its_bad_records() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("lib-batch");
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    let config = ProducerConfig {
        aggregation: true,
        linger: Duration::from_millis(50),
        max_buffered_records: 100,
        ..ProducerConfig::new(&stream)
    };
    let (producer, flusher, mut outcomes) =
        Producer::start_with_outcomes(emu.kinesis(), config).expect("valid");
    let mut batch: Vec<(ProducerRecord, u64)> = (0..50)
        .map(|tag| (ProducerRecord::new(format!("key-{tag}"), "data"), tag))
        .collect();
    let mut bad = ProducerRecord::new("bad", "data");
    bad.explicit_hash_key = Some("abc".into());
    batch.insert(10, (bad, 1000));
    batch.insert(20, (ProducerRecord::new("", "empty key"), 1001));
    let refused = producer.enqueue_tagged_batch(batch).await.expect("taken");
    let refused_tags: Vec<u64> = refused.iter().map(|(tag, _)| *tag).collect();
    assert_eq!(refused_tags, [1000, 1001]);
    assert!(refused
        .iter()
        .all(|(_, e)| matches!(e, SendError::Invalid(_))));

    let mut tags = Vec::new();
    let mut kept = Vec::new();
    while tags.len() < 50 {
        let batch = tokio::time::timeout(Duration::from_secs(30), outcomes.recv())
            .await
            .expect("outcomes within 30 s")
            .expect("the producer still runs");
        for (tag, result) in batch.outcomes() {
            result.as_ref().expect("acknowledged");
            tags.push(*tag);
        }
        kept.push(batch);
    }
    tags.sort_unstable();
    assert_eq!(tags, (0..50).collect::<Vec<_>>(), "each valid tag once");

    // 101 records can never fit 100: refused at once.
    let too_many: Vec<(ProducerRecord, u64)> = (0..101)
        .map(|tag| (ProducerRecord::new("k", "data"), 2000 + tag))
        .collect();
    match tokio::time::timeout(
        Duration::from_secs(10),
        producer.enqueue_tagged_batch(too_many),
    )
    .await
    {
        Ok(Err(SendError::Invalid(why))) => assert!(why.contains("101 records"), "{why}"),
        Ok(other) => panic!("refused expected, got {other:?}"),
        Err(_) => panic!("still waiting after 10 s for room that can never be made"),
    }

    // The 50 outcome batches held keep 50 of the 100 places: 60 records wait, and dropping
    // the wait hands none of them over.
    let waiting: Vec<(ProducerRecord, u64)> = (0..60)
        .map(|tag| (ProducerRecord::new("k", "data"), 3000 + tag))
        .collect();
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            producer.enqueue_tagged_batch(waiting)
        )
        .await
        .is_err(),
        "60 records fitted in 50 places"
    );
    drop(kept);
    drop(producer);
    assert_eq!(flusher.finish(Duration::from_secs(10)).await, 0);
    assert!(
        outcomes.recv().await.is_none(),
        "no outcome for a record of the dropped batch"
    );
}
