//! A measurement, not a check (ignored by plain `cargo test`): the producer binary's resident
//! memory while its buffer is full, against kinesis-mock behind the fault proxy failing 97 %
//! of the `PutRecords` entries (a stream that accepts slowly), with the service's own ~100-byte
//! messages and with 8 KB ones (`PRODUCER_SOURCE`). Run with
//! `cargo test -p producer --test memory -- --ignored --nocapture`; it prints one line per
//! configuration (README, "The producer", bounded memory).

use std::path::Path;
use std::time::Duration;

use common::message::DataMessage;
use common::testkit::{self, FaultProxy, Kind, Rule, ServiceProcess};

/// A `/proc/<pid>/status` figure, in kB.
fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status")
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Bytes of the service's message with this `PRODUCER_SOURCE` (an empty one is unset).
fn message_len(source: &str) -> usize {
    let mut message = DataMessage::new();
    message.source = (!source.is_empty()).then(|| source.to_string());
    message.to_json().len()
}

#[tokio::test]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn resident_memory_with_a_full_buffer_and_a_slow_stream() {
    let emu = testkit::shared(Kind::KinesisMock);
    println!(
        "message | aggregation | max_in_flight | max_buffered_bytes | VmRSS after 15 s | VmHWM"
    );
    for (source_len, aggregation, in_flight, bound) in [
        (0, "false", "1", 16u64 << 20),
        (0, "true", "1", 16 << 20),
        (8000, "false", "1", 1 << 20),
        (8000, "false", "1", 64 << 20),
        (8000, "false", "1", 256 << 20),
        (8000, "true", "1", 256 << 20),
        (8000, "true", "8", 256 << 20),
    ] {
        let stream = testkit::unique_name("producer-memory");
        testkit::create_stream(&emu.kinesis(), &stream, 2).await;
        let proxy = FaultProxy::start(&emu.endpoint());
        proxy.set(vec![Rule::fail_entries(
            "ProvisionedThroughputExceededException",
        )
        .fraction(0.97)
        .only(&["PutRecords"])]);
        let bound_text = bound.to_string();
        let source = "x".repeat(source_len);
        let mut producer = ServiceProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_producer")),
            &testkit::env_with(
                &proxy.endpoint(),
                &stream,
                &[
                    ("AWS_MAX_ATTEMPTS", "1"),
                    ("RUST_LOG", "warn"),
                    ("PRODUCER_INTERVAL_MS", "0"),
                    ("PRODUCER_SOURCE", &source),
                    ("PRODUCER_MAX_BUFFERED_BYTES", &bound_text),
                    ("PRODUCER_MAX_BUFFERED_RECORDS", "1000000"),
                    ("PRODUCER_AGGREGATION", aggregation),
                    ("PRODUCER_MAX_IN_FLIGHT", in_flight),
                    ("PRODUCER_SHARD_RATE_LIMIT", "0"),
                    ("PRODUCER_RECORD_TTL_MS", "600000"),
                ],
            ),
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
        let pid = producer.pid();
        println!(
            "{} B | {aggregation} | {in_flight} | {} MiB | {} MB | {} MB",
            message_len(&source),
            bound >> 20,
            proc_status_kb(pid, "VmRSS:") / 1000,
            proc_status_kb(pid, "VmHWM:") / 1000
        );
        producer.signal("KILL");
        let _ = producer.wait_exit(Duration::from_secs(10));
    }
}
