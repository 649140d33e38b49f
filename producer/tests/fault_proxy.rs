//! The test kit's fault-injecting proxy, checked with the AWS SDK against a real kinesis-mock:
//! each fault reaches the SDK the way the real failure would, and the error classification the
//! services branch on (`kinesis_common::aws::classify`) reads it correctly.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kinesis_common::aws::{classify, ErrorKind};
use kinesis_common::config::AwsTimeouts;
use testkit::{FaultProxy, Kind, Rule};

/// A client through the proxy without SDK retries, so each call is one request.
fn client(proxy: &FaultProxy, attempt_timeout: Duration) -> aws_sdk_kinesis::Client {
    let emu = testkit::shared(Kind::KinesisMock);
    let sdk = emu
        .sdk_config()
        .into_builder()
        .endpoint_url(proxy.endpoint())
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    kinesis_common::aws::kinesis(
        &sdk,
        &AwsTimeouts {
            kinesis_attempt: attempt_timeout,
            kinesis_call: attempt_timeout,
            ..AwsTimeouts::default()
        },
    )
}

fn entries(n: usize) -> Vec<PutRecordsRequestEntry> {
    (0..n)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{i}"))
                .data(Blob::new(format!("record-{i}")))
                .build()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn faults_reach_the_sdk_as_the_real_failures_would() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("proxy");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    let proxy = FaultProxy::start(&emu.endpoint());
    let kinesis = client(&proxy, Duration::from_secs(2));
    let describe = || {
        kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
    };

    // Nothing set: requests pass through.
    describe().await.expect("passes through");
    assert_eq!(proxy.requests("DescribeStreamSummary"), 1);

    proxy.set(vec![Rule::throttle().only(&["DescribeStreamSummary"])]);
    let err = describe().await.expect_err("throttled");
    assert_eq!(classify(&err), ErrorKind::Throttled, "{err:?}");
    // Other operations are untouched.
    kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .expect("ListShards passes");

    // Answers without an AWS error code, as gateways send them: judged by their status.
    proxy.set(vec![Rule::error(502, None)]);
    let err = describe().await.expect_err("bad gateway");
    assert_eq!(classify(&err), ErrorKind::Transient, "{err:?}");
    proxy.set(vec![Rule::error(429, None)]);
    let err = describe().await.expect_err("too many requests");
    assert_eq!(classify(&err), ErrorKind::Throttled, "{err:?}");
    proxy.set(vec![Rule::error(403, None)]);
    let err = describe().await.expect_err("forbidden");
    assert_eq!(classify(&err), ErrorKind::AccessDenied, "{err:?}");

    proxy.set(vec![
        Rule::error(400, Some("AccessDeniedException")).times(1)
    ]);
    let err = describe().await.expect_err("denied once");
    assert_eq!(classify(&err), ErrorKind::AccessDenied, "{err:?}");
    describe().await.expect("only the first request was denied");

    proxy.set(vec![Rule::cut()]);
    let err = describe().await.expect_err("cut");
    assert_eq!(classify(&err), ErrorKind::Transient, "{err:?}");

    proxy.set(vec![Rule::hang()]);
    let started = Instant::now();
    let err = describe()
        .await
        .expect_err("hangs until the attempt timeout");
    assert_eq!(classify(&err), ErrorKind::Transient, "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );

    proxy.clear();
    describe().await.expect("passes through again");
}

#[tokio::test]
async fn failed_put_records_entries_are_not_stored_and_the_rest_are() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("proxy-partial");
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    let proxy = FaultProxy::start(&emu.endpoint());
    let kinesis = client(&proxy, Duration::from_secs(10));
    proxy.set(vec![Rule::fail_entries(
        "ProvisionedThroughputExceededException",
    )
    .fraction(0.5)]);
    let out = kinesis
        .put_records()
        .stream_name(&stream)
        .set_records(Some(entries(100)))
        .send()
        .await
        .expect("a partial failure is a successful call");
    let failed: Vec<usize> = out
        .records()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.error_code().is_some())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(out.records().len(), 100);
    assert_eq!(out.failed_record_count(), Some(failed.len() as i32));
    assert!(
        (20..=80).contains(&failed.len()),
        "{} of 100 failed at a fraction of 0.5",
        failed.len()
    );
    for &i in &failed {
        assert_eq!(
            out.records()[i].error_code(),
            Some("ProvisionedThroughputExceededException")
        );
    }
    // What the emulator holds is exactly the entries answered with a sequence number.
    let stored: std::collections::HashMap<String, String> =
        testkit::read_stream(&emu.kinesis(), &stream)
            .await
            .into_iter()
            .map(|(_, r)| {
                (
                    String::from_utf8_lossy(r.data().as_ref()).into_owned(),
                    r.sequence_number().to_string(),
                )
            })
            .collect();
    assert_eq!(stored.len(), 100 - failed.len());
    for (i, answer) in out.records().iter().enumerate() {
        let key = format!("record-{i}");
        match answer.sequence_number() {
            Some(seq) => assert_eq!(stored.get(&key).map(String::as_str), Some(seq)),
            None => assert!(!stored.contains_key(&key), "{key} failed but is stored"),
        }
    }

    // Every entry failing: nothing reaches the emulator.
    proxy.set(vec![Rule::fail_entries("InternalFailure")]);
    let out = kinesis
        .put_records()
        .stream_name(&stream)
        .set_records(Some(entries(5)))
        .send()
        .await
        .expect("answered");
    assert_eq!(out.failed_record_count(), Some(5));
    assert_eq!(
        testkit::read_stream(&emu.kinesis(), &stream).await.len(),
        100 - failed.len()
    );
}
