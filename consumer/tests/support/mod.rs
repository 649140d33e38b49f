//! What the leased-mode suites share (`leased.rs`, `fanout.rs`): a stream and a lease table on
//! the shared emulators, worker and producer processes, and what their logs and the lease table
//! say. Each suite uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_common::message::DataMessage;
use serde_json::Value;
use testkit::{field, Emulator, ServiceProcess};

/// The failover time the suites run workers with: short, with a margin a loaded machine keeps.
pub const FAILOVER_MS: u64 = 3000;
pub const RENEW_MS: u64 = FAILOVER_MS / 3;

pub fn consumer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_consumer"))
}

pub fn producer_bin() -> PathBuf {
    testkit::sibling_binary(env!("CARGO_BIN_EXE_consumer"), "producer")
}

/// A fresh stream and a lease table name (the application), on the shared emulators.
pub struct Setup {
    pub stream: String,
    pub app: String,
    pub kinesis_endpoint: String,
    pub dynamo_endpoint: String,
    pub kinesis: aws_sdk_kinesis::Client,
    pub dynamo: aws_sdk_dynamodb::Client,
    /// Settings every worker of this setup gets (a suite's own, such as the retrieval).
    pub worker_vars: Vec<(&'static str, &'static str)>,
}

impl Setup {
    /// Creates a stream of `shards` shards on `kinesis`; the lease table is on
    /// [`testkit::lease_table_emulator`].
    pub async fn new(prefix: &str, shards: i32, kinesis: &Emulator) -> Setup {
        let dynamo_emu = testkit::shared(testkit::lease_table_emulator());
        let stream = testkit::unique_name(prefix);
        let client = kinesis.kinesis();
        testkit::create_stream(&client, &stream, shards).await;
        Setup {
            app: testkit::unique_name(&format!("{prefix}-app")),
            stream,
            kinesis_endpoint: kinesis.endpoint(),
            dynamo_endpoint: dynamo_emu.endpoint(),
            kinesis: client,
            dynamo: dynamo_emu.dynamodb(),
            worker_vars: Vec::new(),
        }
    }

    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = testkit::service_env_with_dynamo(
            &self.kinesis_endpoint,
            &self.dynamo_endpoint,
            &self.stream,
        );
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// [`Setup::worker_with`] and nothing extra.
    pub fn worker(&self, id: &str) -> ServiceProcess {
        self.worker_with(id, &[])
    }

    /// A leased worker `id` of the application, with [`FAILOVER_MS`], a shard sync every
    /// second, a 200 ms idle poll and [`Setup::worker_vars`]; `extra` is added last, so it
    /// wins.
    pub fn worker_with(&self, id: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let failover = FAILOVER_MS.to_string();
        let mut vars = vec![
            ("CONSUMER_MODE", "leased"),
            ("CONSUMER_APPLICATION_NAME", self.app.as_str()),
            ("CONSUMER_WORKER_ID", id),
            ("CONSUMER_FAILOVER_MS", failover.as_str()),
            ("CONSUMER_POLL_INTERVAL_MS", "200"),
            ("CONSUMER_SHARD_SYNC_MS", "1000"),
        ];
        vars.extend_from_slice(&self.worker_vars);
        vars.extend_from_slice(extra);
        ServiceProcess::spawn(consumer_bin(), &self.env(&vars))
    }

    /// The producer binary sending `count` messages, one every `interval_ms`.
    pub fn producer(&self, count: usize, interval_ms: u64) -> ServiceProcess {
        let count = count.to_string();
        let interval = interval_ms.to_string();
        ServiceProcess::spawn(
            &producer_bin(),
            &self.env(&[
                ("PRODUCER_COUNT", count.as_str()),
                ("PRODUCER_INTERVAL_MS", interval.as_str()),
            ]),
        )
    }

    /// Every lease item (none while the table does not exist).
    pub async fn items(&self) -> Vec<HashMap<String, AttributeValue>> {
        match self.dynamo.scan().table_name(&self.app).send().await {
            Ok(out) => out.items().to_vec(),
            Err(_) => Vec::new(),
        }
    }

    /// Shard id -> owner, for the leases not at SHARD_END.
    pub async fn owners(&self) -> BTreeMap<String, Option<String>> {
        self.items()
            .await
            .iter()
            .filter(|i| s(i, "checkpoint").as_deref() != Some("SHARD_END"))
            .filter_map(|i| Some((s(i, "leaseKey")?, s(i, "leaseOwner"))))
            .collect()
    }

    /// The shards whose lease `worker` owns (not at SHARD_END).
    pub async fn owned_by(&self, worker: &str) -> HashSet<String> {
        owned_by(&self.owners().await, worker)
    }

    /// Puts one `DataMessage` with `partition_key`: its id, shard and sequence number.
    pub async fn put(&self, partition_key: &str) -> (String, String, String) {
        let message = DataMessage::new();
        let out = testkit::put_record(
            &self.kinesis,
            &self.stream,
            partition_key,
            message.to_json(),
        )
        .await;
        (
            message.id.to_string(),
            out.shard_id().to_string(),
            out.sequence_number().to_string(),
        )
    }
}

fn owned_by(owners: &BTreeMap<String, Option<String>>, worker: &str) -> HashSet<String> {
    owners
        .iter()
        .filter(|(_, o)| o.as_deref() == Some(worker))
        .map(|(k, _)| k.clone())
        .collect()
}

/// A string attribute of a lease item.
pub fn s(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

/// Polls an async condition every 200 ms until it holds or `limit` passes.
pub async fn until<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the two workers hold two leases each, and each knows exactly which: a worker
/// that had a lease stolen has noticed. Then no steal is pending, and records produced from now
/// on are not repeated by balancing.
pub async fn settle_two_by_two(
    setup: &Setup,
    a: (&str, &ServiceProcess),
    b: (&str, &ServiceProcess),
) {
    let settled = until(Duration::from_secs(60), || async {
        let owners = setup.owners().await;
        let (sa, sb) = (owned_by(&owners, a.0), owned_by(&owners, b.0));
        sa.len() == 2 && sb.len() == 2 && a.1.held_leases() == sa && b.1.held_leases() == sb
    })
    .await;
    assert!(
        settled,
        "{:?}\n{}",
        setup.owners().await,
        dump_all(&[a.1, b.1])
    );
}

/// The ids of the messages `process` logged as received, in log order.
pub fn ids(process: &ServiceProcess) -> Vec<String> {
    field(&process.events("record received"), "id")
}

/// The ids of the messages a producer logged as sent.
pub fn sent_ids(producer: &ServiceProcess) -> HashSet<String> {
    field(&producer.events("record sent"), "id")
        .into_iter()
        .collect()
}

/// The shards `process` logged `lease acquired` for, after its first `before` such lines.
pub fn acquired_since(process: &ServiceProcess, before: usize) -> HashSet<String> {
    field(&process.events("lease acquired")[before..], "shard_id")
        .into_iter()
        .collect()
}

/// Waits for `process` to exit, and asserts it exited with 0.
pub fn wait_ok(process: &mut ServiceProcess, limit: Duration) {
    let code = process.wait_exit(limit).and_then(|s| s.code());
    assert_eq!(code, Some(0), "{}", process.dump());
}

/// SIGTERM, then exit 0 within 5 seconds.
pub fn stop(process: &mut ServiceProcess) {
    process.signal("TERM");
    wait_ok(process, Duration::from_secs(5));
}

/// Ids received more than once across `processes`.
pub fn duplicates(processes: &[&ServiceProcess]) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut dups = HashSet::new();
    for p in processes {
        for id in ids(p) {
            if !seen.insert(id.clone()) {
                dups.insert(id);
            }
        }
    }
    dups
}

pub fn all_received(processes: &[&ServiceProcess], sent: &HashSet<String>) -> bool {
    let got: HashSet<String> = processes.iter().flat_map(|p| ids(p)).collect();
    sent.is_subset(&got)
}

/// What `process` logged as received on `shards` after its last `checkpoint` on that shard.
pub fn after_last_checkpoint(
    process: &ServiceProcess,
    shards: &HashSet<String>,
) -> HashSet<String> {
    let mut pending: HashMap<String, HashSet<String>> = HashMap::new();
    for line in process.lines() {
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let shard = event["shard_id"].as_str().unwrap_or_default().to_string();
        match event["message"].as_str() {
            Some("checkpoint") => {
                pending.remove(&shard);
            }
            Some("record received") if shards.contains(&shard) => {
                pending
                    .entry(shard)
                    .or_default()
                    .insert(event["id"].as_str().unwrap_or_default().to_string());
            }
            _ => {}
        }
    }
    pending.into_values().flatten().collect()
}

/// Writes every process's whole output to a file, for a failure message.
pub fn save_logs(test: &str, processes: &[&ServiceProcess]) -> String {
    let path = std::env::temp_dir().join(testkit::unique_name(&format!("leased-{test}")));
    let text: String = processes
        .iter()
        .map(|p| {
            format!(
                "=== {} (pid {})\n{}\n",
                p.name,
                p.pid(),
                p.lines().join("\n")
            )
        })
        .collect();
    let _ = std::fs::write(&path, text);
    format!("logs in {}", path.display())
}

pub fn dump_all(processes: &[&ServiceProcess]) -> String {
    processes
        .iter()
        .map(|p| p.dump())
        .collect::<Vec<_>>()
        .join("\n")
}
