//! Benchmark peer: the plain AWS SDK for Rust, no aggregation. Sends `COUNT` ~100-byte
//! DataMessages to `STREAM_NAME` in `PutRecords` calls of 500, `CONCURRENCY` calls at once,
//! re-sending failed entries until every one is acknowledged. Endpoint, region and credentials
//! come from the standard AWS environment variables.
//!
//! Prints one JSON line: `{"peer":"rust-sdk-plain","acknowledged":N,"seconds":S}`.
//! Run by `bench/run.py`; not part of the services.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kinesis_common::message::DataMessage;
use tokio::task::JoinSet;

fn number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn put_all(
    client: aws_sdk_kinesis::Client,
    stream: String,
    mut entries: Vec<PutRecordsRequestEntry>,
) -> usize {
    let total = entries.len();
    let mut attempt = 0u32;
    while !entries.is_empty() {
        match client
            .put_records()
            .stream_name(&stream)
            .set_records(Some(entries.clone()))
            .send()
            .await
        {
            Ok(out) => {
                entries = entries
                    .into_iter()
                    .zip(out.records())
                    .filter(|(_, r)| r.error_code().is_some())
                    .map(|(e, _)| e)
                    .collect();
            }
            Err(err) => eprintln!("PutRecords failed, retrying: {err}"),
        }
        if !entries.is_empty() {
            attempt += 1;
            tokio::time::sleep(Duration::from_millis((50u64 << attempt.min(4)).min(1000))).await;
        }
    }
    total
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stream = std::env::var("STREAM_NAME")?;
    let count = number("COUNT", 100_000);
    let concurrency = number("CONCURRENCY", 8);
    let sdk = kinesis_common::aws::load().await?;
    let client =
        kinesis_common::aws::kinesis(&sdk, &kinesis_common::config::AwsTimeouts::default());

    let started = Instant::now();
    let mut calls = JoinSet::new();
    let mut acknowledged = 0;
    let mut made = 0;
    while made < count {
        let n = (count - made).min(500);
        let entries = (0..n)
            .map(|_| {
                let mut m = DataMessage::new();
                m.source = Some("bench".into());
                PutRecordsRequestEntry::builder()
                    .partition_key(m.id.to_string())
                    .data(Blob::new(m.to_json()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        made += n;
        if calls.len() >= concurrency {
            acknowledged += calls.join_next().await.transpose()?.unwrap_or(0);
        }
        calls.spawn(put_all(client.clone(), stream.clone(), entries));
    }
    while let Some(done) = calls.join_next().await {
        acknowledged += done?;
    }
    println!(
        "{{\"peer\":\"rust-sdk-plain\",\"acknowledged\":{acknowledged},\"seconds\":{:.3}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
