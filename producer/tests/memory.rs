//! The producer binary's resident memory while its buffer is full, against kinesis-mock behind
//! the fault proxy failing 97 % of the `PutRecords` entries (a stream that accepts slowly): a
//! check that the byte bound holds for small records, and a measurement (ignored by plain
//! `cargo test`) with the service's own messages and with 8 KB ones (`PRODUCER_SOURCE`): run
//! `cargo test --release -p kinesis-producer --test memory -- --ignored --nocapture`, which prints
//! one line per configuration (README, "The producer", bounded memory).

use std::path::Path;
use std::time::Duration;

use kinesis_common::message::DataMessage;
use testkit::{FaultProxy, Kind, Rule, ServiceProcess};

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

/// Runs the service with a full buffer against a slow stream; returns it (and the proxy, to keep
/// for as long as it runs) once `settle` passed.
async fn run_full(
    emu: &testkit::Emulator,
    source: &str,
    aggregation: &str,
    in_flight: &str,
    bound: u64,
    settle: Duration,
) -> (ServiceProcess, FaultProxy) {
    let stream = testkit::unique_name("producer-memory");
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    let proxy = FaultProxy::start(&emu.endpoint());
    proxy.set(vec![Rule::fail_entries(
        "ProvisionedThroughputExceededException",
    )
    .fraction(0.97)
    .only(&["PutRecords"])]);
    let bound = bound.to_string();
    let producer = ServiceProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_producer")),
        &testkit::env_with(
            &proxy.endpoint(),
            &stream,
            &[
                ("AWS_MAX_ATTEMPTS", "1"),
                ("RUST_LOG", "warn"),
                ("PRODUCER_INTERVAL_MS", "0"),
                ("PRODUCER_SOURCE", source),
                ("PRODUCER_MAX_BUFFERED_BYTES", &bound),
                ("PRODUCER_MAX_BUFFERED_RECORDS", "1000000"),
                ("PRODUCER_AGGREGATION", aggregation),
                ("PRODUCER_MAX_IN_FLIGHT", in_flight),
                ("PRODUCER_SHARD_RATE_LIMIT", "0"),
                ("PRODUCER_RECORD_TTL_MS", "600000"),
            ],
        ),
    );
    tokio::time::sleep(settle).await;
    (producer, proxy)
}

/// 30 MiB more of buffer may cost at most 1.25 times that in resident memory, with the
/// service's ~100-byte messages (before each record's bookkeeping counted against the bound,
/// such records took about 1.2 KB each: ten times what the bound counted).
#[tokio::test]
async fn a_full_buffer_of_small_records_stays_within_the_byte_bound() {
    let emu = testkit::shared(Kind::KinesisMock);
    let mut resident = Vec::new();
    for bound in [2u64 << 20, 32 << 20] {
        let (mut producer, _proxy) =
            run_full(emu, "", "false", "1", bound, Duration::from_secs(10)).await;
        resident.push(proc_status_kb(producer.pid(), "VmRSS:") * 1000);
        producer.signal("KILL");
        let _ = producer.wait_exit(Duration::from_secs(10));
    }
    let more = resident[1].saturating_sub(resident[0]);
    println!(
        "resident with a full buffer: 2 MiB bound {} MB, 32 MiB bound {} MB",
        resident[0] / 1_000_000,
        resident[1] / 1_000_000
    );
    let allowed = (30u64 << 20) * 5 / 4;
    assert!(
        more <= allowed,
        "30 MiB more of buffer cost {} MB more resident memory ({} MB -> {} MB); at most {} MB",
        more / 1_000_000,
        resident[0] / 1_000_000,
        resident[1] / 1_000_000,
        allowed / 1_000_000
    );
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
        let source = "x".repeat(source_len);
        let settle = Duration::from_secs(15);
        let (mut producer, _proxy) =
            run_full(emu, &source, aggregation, in_flight, bound, settle).await;
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
