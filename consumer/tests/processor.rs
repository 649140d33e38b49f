//! The library as an application uses it: a `Worker` run in this process with the test's own
//! `RecordProcessor`, against kinesis-mock and the lease-table emulator. What the processor
//! receives (deaggregated user records, resumed inside an aggregate), the checkpointer's forms
//! (after the last record, at a record, two-phase), and the failure policy with a processor
//! that fails on chosen records.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use base64::Engine as _;
use kinesis_common::config::InitialPosition;
use kinesis_consumer::lease::{
    Checkpoint, Checkpointer, ExtendedSequenceNumber, FailurePolicy, InitializationInput,
    KinesisClientRecord, OnFailure, ProcessRecordsInput, RecordProcessor, RecordProcessorFactory,
    RetrievalConfig, Worker, WorkerConfig,
};
use serde_json::Value;
use testkit::{FaultProxy, Kind, Rule};
use tokio_util::sync::CancellationToken;

const SHARD: &str = "shardId-000000000000";

/// What the test processor saw, shared with the test.
#[derive(Default)]
struct Seen {
    initialized: Vec<InitializationInput>,
    /// Records of batches processed successfully, in order.
    processed: Vec<KinesisClientRecord>,
    /// Payloads of records in batches that failed, one entry per failed call.
    failed_calls: Vec<Vec<String>>,
    /// What checkpointer calls answered, for the test to check.
    notes: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Checkpointing {
    /// `checkpoint()` after each batch.
    EachBatch,
    /// `checkpoint_record` at the user record with this sub-sequence number, if delivered.
    AtSub(i64),
    /// `prepare_checkpoint()` after the first batch, never committed.
    PrepareOnly,
    /// Commit the pending checkpoint the lease holds, if any, then `checkpoint()`.
    CommitPending,
}

#[derive(Clone)]
struct Factory {
    seen: Arc<Mutex<Seen>>,
    /// Payloads that make a batch fail.
    poison: Arc<HashSet<String>>,
    checkpointing: Checkpointing,
    /// `checkpoint()` in `shutdown_requested`, as the trait's doc example does.
    checkpoint_on_shutdown: bool,
}

struct Processor {
    factory: Factory,
    pending: Option<ExtendedSequenceNumber>,
}

impl RecordProcessorFactory for Factory {
    type Processor = Processor;
    fn create(&self, _shard_id: &str) -> Processor {
        Processor {
            factory: self.clone(),
            pending: None,
        }
    }
}

fn text(record: &KinesisClientRecord) -> String {
    String::from_utf8_lossy(&record.data).into_owned()
}

impl RecordProcessor for Processor {
    async fn initialize(&mut self, input: InitializationInput) -> anyhow::Result<()> {
        self.pending = input.pending_checkpoint.clone();
        self.factory.seen.lock().unwrap().initialized.push(input);
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> anyhow::Result<()> {
        let payloads: Vec<String> = input.records.iter().map(text).collect();
        if let Some(bad) = payloads.iter().find(|p| self.factory.poison.contains(*p)) {
            self.factory
                .seen
                .lock()
                .unwrap()
                .failed_calls
                .push(payloads.clone());
            anyhow::bail!("cannot process {bad}");
        }
        self.factory
            .seen
            .lock()
            .unwrap()
            .processed
            .extend(input.records.iter().cloned());
        let cp = input.checkpointer;
        let note = match self.factory.checkpointing {
            Checkpointing::EachBatch => format!("{:?}", cp.checkpoint().await),
            Checkpointing::AtSub(sub) => {
                match input.records.iter().find(|r| r.sub_sequence_number == sub) {
                    Some(r) => {
                        // Beyond the last record delivered: refused.
                        let beyond = cp
                            .checkpoint_at(&format!("{}9", r.sequence_number), 0)
                            .await;
                        format!("{:?} {:?}", cp.checkpoint_record(r).await, beyond)
                    }
                    None => "no such record".into(),
                }
            }
            Checkpointing::PrepareOnly => match cp.prepare_checkpoint().await {
                Ok(prepared) => format!("prepared {:?}", prepared.position()),
                Err(e) => format!("{e:?}"),
            },
            Checkpointing::CommitPending => {
                let committed = match self.pending.take() {
                    Some(p) => {
                        match cp
                            .prepare_checkpoint_at(&p.sequence_number, p.sub_sequence_number)
                            .await
                        {
                            Ok(prepared) => format!("{:?}", prepared.checkpoint().await),
                            Err(e) => format!("{e:?}"),
                        }
                    }
                    None => "nothing pending".into(),
                };
                format!("{committed} {:?}", cp.checkpoint().await)
            }
        };
        self.factory.seen.lock().unwrap().notes.push(note);
        Ok(())
    }

    async fn lease_lost(&mut self) {}

    async fn shard_ended(&mut self, _: &Checkpointer) -> anyhow::Result<()> {
        Ok(())
    }

    async fn shutdown_requested(&mut self, cp: &Checkpointer) -> anyhow::Result<()> {
        if self.factory.checkpoint_on_shutdown {
            let written = cp
                .checkpoint()
                .await
                .or_else(|e| e.unless_nothing_delivered());
            let note = format!("shutdown {written:?}");
            self.factory.seen.lock().unwrap().notes.push(note);
            written?;
        }
        Ok(())
    }
}

/// A one-shard stream and a lease table, and workers of the application run in this process.
struct App {
    stream: String,
    app: String,
    kinesis: aws_sdk_kinesis::Client,
    dynamo: aws_sdk_dynamodb::Client,
}

impl App {
    async fn new(prefix: &str) -> App {
        let kinesis = testkit::shared(Kind::KinesisMock).kinesis();
        let dynamo = testkit::shared(testkit::lease_table_emulator()).dynamodb();
        let stream = testkit::unique_name(prefix);
        testkit::create_stream(&kinesis, &stream, 1).await;
        App {
            app: testkit::unique_name(&format!("{prefix}-app")),
            stream,
            kinesis,
            dynamo,
        }
    }

    fn start(&self, factory: Factory, failure: FailurePolicy) -> Running {
        self.start_with(factory, failure)
    }

    fn start_with<F: RecordProcessorFactory>(&self, factory: F, failure: FailurePolicy) -> Running {
        self.start_through(self.kinesis.clone(), factory, failure)
    }

    /// Starts a worker whose Kinesis calls go through `kinesis` (a fault proxy's, say).
    fn start_through<F: RecordProcessorFactory>(
        &self,
        kinesis: aws_sdk_kinesis::Client,
        factory: F,
        failure: FailurePolicy,
    ) -> Running {
        let config = WorkerConfig {
            stream: self.stream.clone(),
            application_name: self.app.clone(),
            worker_id: testkit::unique_name("worker"),
            failover: Duration::from_secs(3),
            renew_interval: Duration::from_secs(1),
            max_leases_per_worker: None,
            shard_sync_interval: Duration::from_secs(1),
            initial_position: InitialPosition::TrimHorizon,
            retrieval: RetrievalConfig::Polling {
                max_records: 10_000,
                poll_interval: Duration::from_millis(200),
            },
            table_wait_timeout: Duration::from_secs(30),
            failure,
            handoff_timeout: Duration::from_secs(30),
            cleanup: kinesis_common::config::LeaseCleanupSettings {
                interval: Duration::from_secs(60),
                completed_interval: Duration::from_secs(300),
                garbage_interval: Duration::from_secs(1800),
            },
        };
        let cancel = CancellationToken::new();
        let worker = Worker::new(config, kinesis, self.dynamo.clone(), factory);
        let task = tokio::spawn(worker.run(cancel.clone()));
        Running { cancel, task }
    }

    /// Puts `payloads` in one `PutRecords` call, so the worker reads them as one batch.
    async fn put_all(&self, stream: &str, payloads: &[&str]) {
        let entries = payloads
            .iter()
            .map(|p| {
                PutRecordsRequestEntry::builder()
                    .partition_key("key")
                    .data(Blob::new(p.as_bytes()))
                    .build()
                    .unwrap()
            })
            .collect();
        let out = self
            .kinesis
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .expect("PutRecords");
        assert_eq!(out.failed_record_count(), Some(0));
    }

    /// The sequence number of the record stored with this payload.
    async fn sequence_number_of(&self, payload: &str) -> String {
        testkit::read_stream(&self.kinesis, &self.stream)
            .await
            .into_iter()
            .find(|(_, r)| r.data().as_ref() == payload.as_bytes())
            .map(|(_, r)| r.sequence_number().to_string())
            .expect("stored")
    }

    async fn lease_item(&self) -> std::collections::HashMap<String, AttributeValue> {
        self.dynamo
            .get_item()
            .table_name(&self.app)
            .key("leaseKey", AttributeValue::S(SHARD.into()))
            .consistent_read(true)
            .send()
            .await
            .expect("GetItem")
            .item
            .unwrap_or_default()
    }
}

struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the worker stops within 10 s")
            .expect("no panic")
            .expect("the worker ends without an error");
    }
}

fn factory(poison: &[&str], checkpointing: Checkpointing) -> (Factory, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    (
        Factory {
            seen: seen.clone(),
            poison: Arc::new(poison.iter().map(|p| p.to_string()).collect()),
            checkpointing,
            checkpoint_on_shutdown: false,
        },
        seen,
    )
}

async fn until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    assert!(
        testkit::eventually(limit, &mut condition).await,
        "not within {limit:?}: {what}"
    );
}

fn processed(seen: &Mutex<Seen>) -> Vec<String> {
    seen.lock().unwrap().processed.iter().map(text).collect()
}

fn s_attr<'a>(
    item: &'a std::collections::HashMap<String, AttributeValue>,
    name: &str,
) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn n_attr(item: &std::collections::HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

/// Log lines (JSON) written while `f` runs on this thread: the tests run on a current-thread
/// runtime, so the worker's tasks log here too.
#[tokio::test]
async fn a_processor_gets_the_user_records_of_aggregates_and_resumes_inside_one() {
    let app = App::new("proc-users").await;
    let mut agg = kinesis_common::kpl::Aggregator::new();
    for i in 0..5 {
        let ehk = (i == 3).then_some("170141183460469231731687303715884105728");
        agg.add(&format!("k{i}"), ehk, format!("member-{i}").as_bytes());
    }
    let aggregate = testkit::put_record(&app.kinesis, &app.stream, "outer", agg.finish()).await;
    let plain = testkit::put_record(&app.kinesis, &app.stream, "plain-key", "plain").await;
    let agg_seq = aggregate.sequence_number().to_string();

    // The first holder checkpoints at the aggregate's third user record, then stops.
    let (f, seen) = factory(&[], Checkpointing::AtSub(2));
    let running = app.start(f, FailurePolicy::default());
    until(Duration::from_secs(30), "6 user records processed", || {
        seen.lock().unwrap().processed.len() == 6
    })
    .await;
    until(Duration::from_secs(10), "checkpoint written", || {
        !seen.lock().unwrap().notes.is_empty()
    })
    .await;
    running.stop().await;
    {
        let seen = seen.lock().unwrap();
        let users = &seen.processed;
        assert_eq!(
            users.iter().map(text).collect::<Vec<_>>(),
            ["member-0", "member-1", "member-2", "member-3", "member-4", "plain"]
        );
        for (i, user) in users[..5].iter().enumerate() {
            assert!(user.aggregated);
            assert_eq!(&*user.sequence_number, agg_seq);
            assert_eq!(user.sub_sequence_number, i as i64);
            assert_eq!(&*user.partition_key, format!("k{i}"));
            assert!(user.approximate_arrival_timestamp.is_some());
        }
        assert_eq!(
            users[3].explicit_hash_key.as_deref(),
            Some("170141183460469231731687303715884105728")
        );
        assert_eq!(users[0].explicit_hash_key, None);
        let last = &users[5];
        assert!(!last.aggregated);
        assert_eq!(last.sub_sequence_number, 0);
        assert_eq!(&*last.partition_key, "plain-key");
        assert_eq!(&*last.sequence_number, plain.sequence_number());
        assert!(
            seen.notes[0].starts_with("Ok(()) Err(Invalid"),
            "a checkpoint beyond the last record delivered is refused: {:?}",
            seen.notes
        );
        assert!(seen.notes[0].contains("beyond the last record delivered"));
    }
    let item = app.lease_item().await;
    assert_eq!(s_attr(&item, "checkpoint"), Some(agg_seq.as_str()));
    assert_eq!(n_attr(&item, "checkpointSubSequenceNumber"), Some(2));

    // The next holder starts right after that user record.
    let (f, seen) = factory(&[], Checkpointing::EachBatch);
    let running = app.start(f, FailurePolicy::default());
    until(Duration::from_secs(30), "3 user records processed", || {
        seen.lock().unwrap().processed.len() >= 3
    })
    .await;
    // Give a repeat the time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.stop().await;
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.initialized[0].checkpoint,
        Checkpoint::At(ExtendedSequenceNumber::new(agg_seq.clone(), 2))
    );
    assert_eq!(
        seen.processed.iter().map(text).collect::<Vec<_>>(),
        ["member-3", "member-4", "plain"]
    );
}

#[tokio::test]
async fn a_prepared_checkpoint_is_stored_as_the_kcl_stores_it_and_told_to_the_next_holder() {
    let app = App::new("proc-prepare").await;
    app.put_all(&app.stream, &["a", "b", "c"]).await;

    let (f, seen) = factory(&[], Checkpointing::PrepareOnly);
    let running = app.start(f, FailurePolicy::default());
    until(Duration::from_secs(30), "prepared", || {
        !seen.lock().unwrap().notes.is_empty()
    })
    .await;
    running.stop().await;
    let last_seq = seen.lock().unwrap().processed[2]
        .sequence_number
        .to_string();
    assert!(
        seen.lock().unwrap().notes[0].starts_with("prepared"),
        "{:?}",
        seen.lock().unwrap().notes
    );
    let item = app.lease_item().await;
    assert_eq!(s_attr(&item, "pendingCheckpoint"), Some(last_seq.as_str()));
    assert_eq!(n_attr(&item, "pendingCheckpointSubSequenceNumber"), Some(0));
    assert_eq!(
        s_attr(&item, "checkpoint"),
        Some("TRIM_HORIZON"),
        "not committed"
    );

    // The next holder learns of it, gets every record again (nothing was committed), commits.
    let (f, seen) = factory(&[], Checkpointing::CommitPending);
    let running = app.start(f, FailurePolicy::default());
    until(
        Duration::from_secs(30),
        "processed again and committed",
        || !seen.lock().unwrap().notes.is_empty(),
    )
    .await;
    running.stop().await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.initialized[0].pending_checkpoint,
            Some(ExtendedSequenceNumber::new(last_seq.clone(), 0))
        );
        assert_eq!(
            seen.processed.iter().map(text).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(seen.notes[0], "Ok(()) Ok(())");
    }
    let item = app.lease_item().await;
    assert_eq!(s_attr(&item, "checkpoint"), Some(last_seq.as_str()));
    assert!(!item.contains_key("pendingCheckpoint"), "{item:?}");
    assert!(!item.contains_key("pendingCheckpointSubSequenceNumber"));
}

fn policy(
    retries: Option<u32>,
    bisect: bool,
    max_age: Option<Duration>,
    on_failure: OnFailure,
) -> FailurePolicy {
    FailurePolicy {
        retry_attempts: retries,
        retry_backoff_max: Duration::from_millis(400),
        bisect_on_error: bisect,
        max_record_age: max_age,
        on_failure,
    }
}

const TEN: [&str; 10] = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"];

#[tokio::test]
async fn bisecting_isolates_the_failing_records_and_skip_checkpoints_past_them() {
    let (logs, _guard) = testkit::LogCapture::start();
    let app = App::new("proc-skip").await;
    app.put_all(&app.stream, &TEN).await;
    let stored = testkit::read_stream(&app.kinesis, &app.stream).await;
    let seq_of = |payload: &str| {
        stored
            .iter()
            .find(|(_, r)| r.data().as_ref() == payload.as_bytes())
            .map(|(_, r)| r.sequence_number().to_string())
            .unwrap()
    };
    let (f, seen) = factory(&["r4", "r7"], Checkpointing::EachBatch);
    let running = app.start(f, policy(Some(1), true, None, OnFailure::Skip));
    until(Duration::from_secs(60), "checkpoint at r9", || {
        logs.events("checkpoint")
            .iter()
            .any(|e| e["sequence_number"] == seq_of("r9"))
    })
    .await;
    running.stop().await;
    // Every good record once, in order; the two bad ones never.
    assert_eq!(
        processed(&seen),
        ["r0", "r1", "r2", "r3", "r5", "r6", "r8", "r9"]
    );
    // Each bad record, alone, was tried twice (one retry).
    let calls = seen.lock().unwrap().failed_calls.clone();
    for bad in ["r4", "r7"] {
        let alone = calls
            .iter()
            .filter(|c| *c == &vec![bad.to_string()])
            .count();
        assert_eq!(alone, 2, "{bad} alone: {calls:?}");
    }
    let skipped = logs.events("records skipped after failing");
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    for (event, bad) in skipped.iter().zip(["r4", "r7"]) {
        assert_eq!(event["shard_id"], SHARD);
        assert_eq!(event["first_sequence_number"], seq_of(bad));
        assert_eq!(event["last_sequence_number"], seq_of(bad));
        assert_eq!(event["records"], 1);
        assert_eq!(event["attempts"], 2);
        assert!(event["error"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot process {bad}")));
    }
    let item = app.lease_item().await;
    assert_eq!(s_attr(&item, "checkpoint"), Some(seq_of("r9").as_str()));
}

#[tokio::test]
async fn failed_records_go_to_the_failure_stream_with_their_metadata() {
    let app = App::new("proc-dlq").await;
    let failures = testkit::unique_name("proc-dlq-failures");
    testkit::create_stream(&app.kinesis, &failures, 1).await;
    app.put_all(&app.stream, &TEN).await;
    let (f, seen) = factory(&["r4"], Checkpointing::EachBatch);
    let running = app.start(
        f,
        policy(Some(0), true, None, OnFailure::Stream(failures.clone())),
    );
    until(Duration::from_secs(60), "r9 processed", || {
        processed(&seen).contains(&"r9".to_string())
    })
    .await;
    running.stop().await;
    assert_eq!(
        processed(&seen),
        ["r0", "r1", "r2", "r3", "r5", "r6", "r7", "r8", "r9"]
    );
    let r4 = app.sequence_number_of("r4").await;
    let dead = testkit::read_stream(&app.kinesis, &failures).await;
    assert_eq!(dead.len(), 1, "exactly the failed record");
    let body: Value = serde_json::from_slice(dead[0].1.data().as_ref()).unwrap();
    assert_eq!(body["source_stream"], app.stream.as_str());
    assert_eq!(body["application"], app.app.as_str());
    assert_eq!(body["shard_id"], SHARD);
    assert_eq!(body["sequence_number"], r4.as_str());
    assert_eq!(body["sub_sequence_number"], 0);
    assert_eq!(body["partition_key"], "key");
    assert_eq!(body["attempts"], 1);
    assert!(body["approximate_arrival_timestamp"].is_string());
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("cannot process r4"));
    let data = base64::engine::general_purpose::STANDARD
        .decode(body["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, b"r4");
    assert_eq!(dead[0].1.partition_key(), Some("key"));
}

/// Issue 19, defect 6: a failed record counts as stored on the failure stream only when the
/// `PutRecords` answer says so (a sequence number, no error code). A short answer, or an entry
/// with neither, puts it again: the checkpoint never passes a record that is nowhere.
#[tokio::test]
async fn a_failed_record_the_failure_stream_did_not_confirm_is_put_again() {
    for (rule, what) in [
        (Rule::unanswered_entries(), "short answer"),
        (Rule::blank_entries(), "blank entry"),
    ] {
        let app = App::new("proc-dlq-unconfirmed").await;
        let failures = testkit::unique_name("proc-dlq-unconfirmed-failures");
        testkit::create_stream(&app.kinesis, &failures, 1).await;
        app.put_all(&app.stream, &["r0", "bad", "r2"]).await;
        // Only the worker's Kinesis calls go through the proxy, and its only PutRecords calls
        // are the failure stream's: the first one is answered without confirming the record
        // (which the proxy kept from the emulator).
        let proxy = FaultProxy::start(&testkit::shared(Kind::KinesisMock).endpoint());
        proxy.set(vec![rule.times(1)]);
        let config = aws_sdk_kinesis::config::Builder::from(
            &testkit::shared(Kind::KinesisMock).sdk_config(),
        )
        .endpoint_url(proxy.endpoint())
        .build();
        let (f, seen) = factory(&["bad"], Checkpointing::EachBatch);
        let running = app.start_through(
            aws_sdk_kinesis::Client::from_conf(config),
            f,
            policy(Some(0), true, None, OnFailure::Stream(failures.clone())),
        );
        until(Duration::from_secs(60), "r2 processed", || {
            processed(&seen).contains(&"r2".to_string())
        })
        .await;
        running.stop().await;
        assert_eq!(
            proxy.faults("PutRecords"),
            1,
            "{what}: the answer was rewritten"
        );
        let bad = app.sequence_number_of("bad").await;
        let dead = testkit::read_stream(&app.kinesis, &failures).await;
        let stored: Vec<String> = dead
            .iter()
            .map(|(_, r)| {
                let body: Value = serde_json::from_slice(r.data().as_ref()).unwrap();
                body["sequence_number"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(
            stored,
            [bad],
            "{what}: the failed record is on the failure stream"
        );
        let r2 = app.sequence_number_of("r2").await;
        assert_eq!(
            s_attr(&app.lease_item().await, "checkpoint"),
            Some(r2.as_str())
        );
    }
}

#[tokio::test]
async fn stop_keeps_the_lease_and_processes_nothing_after_the_failing_record() {
    let (logs, _guard) = testkit::LogCapture::start();
    let app = App::new("proc-stop").await;
    app.put_all(&app.stream, &TEN).await;
    let (f, seen) = factory(&["r4"], Checkpointing::EachBatch);
    let running = app.start(f, policy(Some(1), true, None, OnFailure::Stop));
    until(Duration::from_secs(60), "the shard stops", || {
        !logs.events("shard stopped: records keep failing; the lease is kept and nothing after them is processed until this worker restarts").is_empty()
    })
    .await;
    let before = n_attr(&app.lease_item().await, "leaseCounter").unwrap();
    // Well past the failover time (3 s): still held, still renewed, nothing more processed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let item = app.lease_item().await;
    assert!(n_attr(&item, "leaseCounter").unwrap() > before, "renewed");
    assert!(s_attr(&item, "leaseOwner").is_some(), "still owned");
    assert_eq!(processed(&seen), ["r0", "r1", "r2", "r3"]);
    let r3 = app.sequence_number_of("r3").await;
    assert_eq!(
        s_attr(&item, "checkpoint"),
        Some(r3.as_str()),
        "not past r4"
    );
    let stopped = logs.events("shard stopped: records keep failing; the lease is kept and nothing after them is processed until this worker restarts");
    assert_eq!(stopped[0]["shard_id"], SHARD);
    assert_eq!(stopped[0]["attempts"], 2);
    running.stop().await;
}

/// Issue 19, defect 2: records whose processing failed are not "delivered" for a checkpoint.
/// A stop while a failing batch waits for its retry, or after `stop` halted the shard, runs
/// `shutdown_requested`; a processor that checkpoints there (as the trait's doc example does)
/// must not record the failed records as processed, so the next holder gets them.
#[tokio::test]
async fn a_checkpoint_at_shutdown_does_not_pass_records_whose_processing_failed() {
    // (failure policy, whether the shard halts, what the first holder processed, what the
    // next holder must get)
    let cases = [
        // The default: retried for ever; stopped while waiting for the next attempt.
        (
            policy(None, false, None, OnFailure::Stop),
            false,
            vec!["a"],
            vec!["b", "bad", "c"],
        ),
        // Bisected, given up on alone, the shard halted (`stop`), then the worker stopped.
        (
            policy(Some(0), true, None, OnFailure::Stop),
            true,
            vec!["a", "b"],
            vec!["bad", "c"],
        ),
    ];
    for (failure, halts, first, next) in cases {
        let app = App::new("proc-shutdown-cp").await;
        app.put_all(&app.stream, &["a"]).await;
        let (mut f, seen) = factory(&["bad"], Checkpointing::EachBatch);
        f.checkpoint_on_shutdown = true;
        let running = app.start(f, failure);
        until(Duration::from_secs(30), "a processed", || {
            processed(&seen) == ["a"]
        })
        .await;
        app.put_all(&app.stream, &["b", "bad", "c"]).await;
        until(Duration::from_secs(30), "the bad record failed", || {
            let failed = {
                let calls = &seen.lock().unwrap().failed_calls;
                if halts {
                    calls.iter().any(|call| call == &["bad"])
                } else {
                    !calls.is_empty()
                }
            };
            failed && processed(&seen) == first
        })
        .await;
        running.stop().await;
        let notes = seen.lock().unwrap().notes.clone();
        assert!(
            notes.last().is_some_and(|n| n == "shutdown Ok(())"),
            "the processor checkpointed at shutdown: {notes:?}"
        );
        let last_processed = app.sequence_number_of(first[first.len() - 1]).await;
        assert_eq!(
            s_attr(&app.lease_item().await, "checkpoint"),
            Some(last_processed.as_str()),
            "the checkpoint stays at the last record processed ({:?}), before {next:?}",
            first[first.len() - 1]
        );

        // The next holder gets the records that failed, and what came after them.
        let (f, seen) = factory(&[], Checkpointing::EachBatch);
        let running = app.start(f, FailurePolicy::default());
        until(
            Duration::from_secs(30),
            "c processed by the next holder",
            || processed(&seen).contains(&"c".to_string()),
        )
        .await;
        running.stop().await;
        assert_eq!(processed(&seen), next);
    }
}

#[tokio::test]
async fn a_record_older_than_the_maximum_age_is_given_up_on_without_more_retries() {
    let (logs, _guard) = testkit::LogCapture::start();
    let app = App::new("proc-age").await;
    app.put_all(&app.stream, &["old-and-bad"]).await;
    let (f, seen) = factory(&["old-and-bad"], Checkpointing::EachBatch);
    // Retries for ever, but not past 2 s of age.
    let running = app.start(
        f,
        policy(None, false, Some(Duration::from_secs(2)), OnFailure::Skip),
    );
    until(Duration::from_secs(60), "skipped", || {
        !logs.events("records skipped after failing").is_empty()
    })
    .await;
    app.put_all(&app.stream, &["next"]).await;
    until(Duration::from_secs(30), "the next record processed", || {
        processed(&seen) == ["next"]
    })
    .await;
    running.stop().await;
    let skipped = logs.events("records skipped after failing");
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("older than CONSUMER_MAX_RECORD_AGE_SECONDS"));
    assert!(skipped[0]["attempts"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn a_failure_stream_that_does_not_exist_stops_the_worker_at_start() {
    let app = App::new("proc-nostream").await;
    let (f, _) = factory(&[], Checkpointing::EachBatch);
    let running = app.start(
        f,
        policy(
            Some(1),
            false,
            None,
            OnFailure::Stream("no-such-stream".into()),
        ),
    );
    let result = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("ends")
        .expect("no panic");
    let err = result.expect_err("a missing failure stream is an error");
    assert!(
        err.to_string()
            .contains("CONSUMER_ON_FAILURE names stream \"no-such-stream\", which does not exist"),
        "{err:#}"
    );
}

/// The example's processor, compiled into this suite so that it runs here as the example's
/// `main` runs it.
#[allow(dead_code)]
#[path = "../examples/custom_processor.rs"]
mod custom_processor;

#[tokio::test]
async fn the_custom_processor_example_reads_and_checkpoints() {
    let (logs, _guard) = testkit::LogCapture::start();
    let app = App::new("proc-example").await;
    let messages: Vec<String> = (0..5)
        .map(|_| String::from_utf8(kinesis_common::message::DataMessage::new().to_json()).unwrap())
        .collect();
    let refs: Vec<&str> = messages.iter().map(String::as_str).collect();
    app.put_all(&app.stream, &refs).await;
    let running = app.start_with(
        custom_processor::Counters {
            checkpoint_every: 2,
        },
        FailurePolicy::default(),
    );
    until(
        Duration::from_secs(60),
        "5 records and a checkpoint",
        || {
            logs.events("example record").len() == 5
                && !logs.events("example checkpoint").is_empty()
        },
    )
    .await;
    running.stop().await;
    let last = app.sequence_number_of(&messages[4]).await;
    let item = app.lease_item().await;
    assert_eq!(s_attr(&item, "checkpoint"), Some(last.as_str()));
    assert!(!item.contains_key("pendingCheckpoint"));
    let ids: HashSet<String> = logs
        .events("example record")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 5);
}
