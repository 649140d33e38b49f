//! `consumer multilang FILE` running KCL applications written on the real client libraries:
//! amazon-kclpy (PyPI, installed into .venv by scripts/dev-venv.sh) and aws-kcl (npm,
//! `multilang/node_modules`), with the record processors of `multilang/apps/`, against
//! kinesis-mock and dynalite. A missing library fails the test (run scripts/test.sh).
//!
//! The processors write one line to standard error per record ("processed SHARD SEQUENCE SUB
//! DATA"), which the daemon forwards as `child stderr`: what the tests count.
//!
//! Short timings: failover 3 s. The tests run one at a time (2 cores, child processes).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;
use testkit::{field, Kind, ServiceProcess};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The venv's Python with amazon-kclpy; fails (not skips) when it is missing.
fn kclpy_command() -> String {
    let python = repo().join(".venv/bin/python");
    let kclpy = std::process::Command::new(&python)
        .args(["-c", "import amazon_kclpy.kcl"])
        .status();
    assert!(
        kclpy.is_ok_and(|s| s.success()),
        "amazon-kclpy is not installed in {}: run scripts/dev-venv.sh (scripts/test.sh does)",
        python.display()
    );
    format!(
        "{} {}",
        python.display(),
        repo().join("multilang/apps/kclpy_app.py").display()
    )
}

/// Node.js with the aws-kcl app; fails (not skips) when the library is missing.
fn node_command() -> String {
    let kcl = repo().join("multilang/node_modules/aws-kcl/index.js");
    assert!(
        kcl.exists(),
        "{} is missing: run npm ci --prefix multilang (scripts/test.sh does)",
        kcl.display()
    );
    format!(
        "node {}",
        repo().join("multilang/apps/node_app.js").display()
    )
}

/// One application: a stream, its lease table, a folder for properties files and markers.
struct App {
    setup: Setup,
    dir: PathBuf,
}

impl App {
    async fn new(prefix: &str, shards: i32) -> App {
        let setup = Setup::new(prefix, shards, testkit::shared(Kind::KinesisMock)).await;
        let dir = std::env::temp_dir().join(testkit::unique_name(prefix));
        std::fs::create_dir_all(dir.join("markers")).expect("temp folder");
        App { setup, dir }
    }

    /// Writes a properties file for worker `id` running `command`; `extra` lines are appended
    /// (a later key wins, as in Java).
    fn properties(&self, id: &str, command: &str, extra: &[&str]) -> PathBuf {
        let mut text = format!(
            "# written by consumer/tests/multilang.rs\n\
             executableName = {command}\n\
             streamName = {stream}\n\
             applicationName = {app}\n\
             workerId = {id}\n\
             AwsCredentialsProvider = DefaultCredentialsProvider\n\
             processingLanguage = test\n\
             initialPositionInStream = TRIM_HORIZON\n\
             regionName = {region}\n\
             failoverTimeMillis = {FAILOVER_MS}\n\
             shardSyncIntervalMillis = 1000\n\
             idleTimeBetweenReadsInMillis = 200\n",
            stream = self.setup.stream,
            app = self.setup.app,
            region = testkit::TEST_REGION,
        );
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        let path = self.dir.join(format!("{id}.properties"));
        std::fs::write(&path, text).expect("write properties");
        path
    }

    fn env(&self) -> Vec<(String, String)> {
        let markers = self.dir.join("markers");
        let mut env = self.setup.env(&[]);
        // The properties file names the stream; the variable must not be what makes it work.
        env.retain(|(k, _)| k != "STREAM_NAME");
        env.push(("MULTILANG_MARKERS".into(), markers.display().to_string()));
        env
    }

    /// `consumer multilang FILE` with the application's environment.
    fn daemon(&self, properties: &Path) -> ServiceProcess {
        self.daemon_with_env(properties, self.env())
    }

    fn daemon_with_env(&self, properties: &Path, env: Vec<(String, String)>) -> ServiceProcess {
        let file = properties.display().to_string();
        ServiceProcess::spawn_with_args(consumer_bin(), &["multilang", &file], &env)
    }

    /// Puts one record with `data` (its own partition key); its shard and sequence number.
    async fn put(&self, data: &str) -> (String, String) {
        let out = testkit::put_record(
            &self.setup.kinesis,
            &self.setup.stream,
            data,
            data.as_bytes(),
        )
        .await;
        (
            out.shard_id().to_string(),
            out.sequence_number().to_string(),
        )
    }
}

/// What the child processes of `daemon` said on standard error, in order.
fn child_lines(daemon: &ServiceProcess) -> Vec<String> {
    field(&daemon.events("child stderr"), "line")
}

/// The data of each record the children of `daemons` processed, with how many times.
fn processed(daemons: &[&ServiceProcess]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for daemon in daemons {
        for line in child_lines(daemon) {
            if let Some(rest) = line.strip_prefix("processed ") {
                let data = rest.splitn(4, ' ').nth(3).unwrap_or_default().to_string();
                *counts.entry(data).or_insert(0) += 1;
            }
        }
    }
    counts
}

async fn wait_processed(daemons: &[&ServiceProcess], data: &[String], limit: Duration) {
    let done = testkit::eventually(limit, || {
        let seen = processed(daemons);
        data.iter().all(|d| seen.contains_key(d))
    })
    .await;
    assert!(done, "not every record processed\n{}", dump_all(daemons));
}

/// SIGTERM: the daemon exits 0 within 5 s; how long it took.
fn stop_timed(daemon: &mut ServiceProcess) -> Duration {
    let started = Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", daemon.dump());
    started.elapsed()
}

#[tokio::test]
async fn kclpy_gets_every_record_once_and_resumes_after_a_restart() {
    let _serial = SERIAL.lock().await;
    let app = App::new("ml-kclpy", 2).await;
    let command = kclpy_command();
    // The endpoints from the properties file, not the AWS variables; and a key we do not
    // implement.
    let props = app.properties(
        "a",
        &command,
        &[
            &format!("kinesisEndpoint = {}", app.setup.kinesis_endpoint),
            &format!("dynamoDBEndpoint = {}", app.setup.dynamo_endpoint),
            "metricsLevel = NONE",
        ],
    );
    let env: Vec<(String, String)> = app
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ENDPOINT_URL"))
        .collect();
    let mut first = app.daemon_with_env(&props, env.clone());
    let before: Vec<String> = (0..20).map(|i| format!("before-{i}")).collect();
    for data in &before {
        app.put(data).await;
    }
    wait_processed(&[&first], &before, Duration::from_secs(60)).await;
    let warnings = first.events("property not implemented");
    assert_eq!(
        field(&warnings, "key"),
        vec!["metricsLevel"],
        "{}",
        first.dump()
    );
    // Both shards ran a child each, which said where it started.
    let started: Vec<String> = child_lines(&first)
        .into_iter()
        .filter(|l| l.starts_with("initialized "))
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(
        started.iter().all(|l| l.ends_with(" TRIM_HORIZON")),
        "{started:?}"
    );

    let took = stop_timed(&mut first);
    let said: Vec<String> = child_lines(&first)
        .into_iter()
        .filter(|l| l.starts_with("shutdown requested "))
        .collect();
    assert_eq!(
        said.len(),
        2,
        "each child heard shutdownRequested: {said:?}\n{}",
        first.dump()
    );
    eprintln!(
        "multilang daemon (kclpy, 2 children) stopped {} ms after SIGTERM",
        took.as_millis()
    );

    // A new daemon resumes from the checkpoints the children asked for.
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    for data in &after {
        app.put(data).await;
    }
    let mut second = app.daemon_with_env(&props, env);
    wait_processed(&[&second], &after, Duration::from_secs(60)).await;
    let resumed: Vec<String> = child_lines(&second)
        .into_iter()
        .filter(|l| l.starts_with("initialized "))
        .collect();
    assert!(
        resumed.iter().all(|l| !l.ends_with(" TRIM_HORIZON")),
        "resumed from sequence numbers: {resumed:?}"
    );
    stop_timed(&mut second);
    let counts = processed(&[&first, &second]);
    for data in before.iter().chain(&after) {
        assert_eq!(counts.get(data), Some(&1), "{data}: {counts:?}");
    }
    assert_eq!(counts.len(), 30, "{counts:?}");
}

#[tokio::test]
async fn nodejs_kcl_gets_every_record_once_with_fan_out() {
    let _serial = SERIAL.lock().await;
    let app = App::new("ml-node", 2).await;
    let props = app.properties("n", &node_command(), &["retrievalMode = FANOUT"]);
    let mut daemon = app.daemon(&props);
    let data: Vec<String> = (0..20).map(|i| format!("node-{i}")).collect();
    for d in &data {
        app.put(d).await;
    }
    wait_processed(&[&daemon], &data, Duration::from_secs(90)).await;
    let started = daemon.events("consumer started");
    assert_eq!(field(&started, "retrieval"), vec!["fanout"]);
    // The children checkpointed at sequence numbers they named.
    let ok = testkit::eventually(Duration::from_secs(10), || {
        let shards: std::collections::HashSet<String> =
            field(&daemon.events("checkpoint"), "shard_id")
                .into_iter()
                .collect();
        shards.len() == 2
    })
    .await;
    assert!(ok, "{}", daemon.dump());
    stop_timed(&mut daemon);
    let said = child_lines(&daemon)
        .into_iter()
        .filter(|l| l.starts_with("shutdown requested "))
        .count();
    assert_eq!(said, 2, "{}", daemon.dump());
    let counts = processed(&[&daemon]);
    for d in &data {
        assert_eq!(counts.get(d), Some(&1), "{d}: {counts:?}");
    }
}

#[tokio::test]
async fn a_child_that_crashes_hangs_or_writes_garbage_is_stopped_and_its_shard_retried() {
    let _serial = SERIAL.lock().await;
    let app = App::new("ml-faults", 1).await;
    let props = app.properties("f", &kclpy_command(), &["timeoutInSeconds = 3"]);
    let mut daemon = app.daemon(&props);
    let first: Vec<String> = (0..3).map(|i| format!("first-{i}")).collect();
    let mut last = String::new();
    for d in &first {
        last = app.put(d).await.1;
    }
    wait_processed(&[&daemon], &first, Duration::from_secs(60)).await;
    // Checkpointed: what follows must not bring these back.
    let checkpointed = testkit::eventually(Duration::from_secs(10), || {
        field(&daemon.events("checkpoint"), "sequence_number").contains(&last)
    })
    .await;
    assert!(checkpointed, "{}", daemon.dump());

    let faults = [
        ("crash-once", "exited"),
        ("hang-once", "did not answer processRecords within 3000 ms"),
        ("garbage-once", "broke the protocol"),
    ];
    for (n, (fault, cause)) in faults.iter().enumerate() {
        let data = format!("{fault}-{n}");
        let (shard, _) = app.put(&data).await;
        let next = format!("next-{n}");
        app.put(&next).await;
        wait_processed(&[&daemon], &[data.clone(), next], Duration::from_secs(60)).await;
        let failed = "shard processing failed, releasing its lease";
        let reported =
            testkit::eventually(Duration::from_secs(10), || daemon.events(failed).len() > n).await;
        assert!(reported, "{}", daemon.dump());
        let failures = daemon.events(failed);
        assert_eq!(
            failures.len(),
            n + 1,
            "one error line per fault\n{}",
            daemon.dump()
        );
        let failure = &failures[n];
        assert_eq!(failure["shard_id"], shard.as_str());
        let error = failure["error"].as_str().unwrap_or_default();
        assert!(error.contains(cause), "{fault}: {error}");
        eprintln!("{fault}: {error}");
        assert_eq!(failure["level"], "ERROR");
    }
    stop_timed(&mut daemon);
    let counts = processed(&[&daemon]);
    for d in &first {
        assert_eq!(
            counts.get(d),
            Some(&1),
            "checkpointed before the faults: {counts:?}"
        );
    }
    for (n, (fault, _)) in faults.iter().enumerate() {
        assert!(counts.contains_key(&format!("{fault}-{n}")), "{counts:?}");
    }
}

#[tokio::test]
async fn a_bad_property_stops_the_start_with_one_line_naming_it() {
    let app = App::new("ml-bad", 1).await;
    let props = app.properties("b", "true", &["failoverTimeMillis = soon"]);
    let mut daemon = app.daemon(&props);
    daemon.expect_exit(Duration::from_secs(10), 2);
    let err = daemon.stderr_lines();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains("failoverTimeMillis") && err[0].contains("soon"),
        "{err:?}"
    );
}

#[tokio::test]
async fn two_daemons_share_the_leases_and_one_takes_over_after_kill_9() {
    let _serial = SERIAL.lock().await;
    let app = App::new("ml-share", 4).await;
    let command = kclpy_command();
    let a = app.daemon(&app.properties("a", &command, &[]));
    let mut b = app.daemon(&app.properties("b", &command, &[]));
    settle_two_by_two(&app.setup, ("a", &a), ("b", &b)).await;
    let before: Vec<String> = (0..20).map(|i| format!("shared-{i}")).collect();
    for d in &before {
        app.put(d).await;
    }
    wait_processed(&[&a, &b], &before, Duration::from_secs(60)).await;
    let mine = |daemon: &ServiceProcess| {
        child_lines(daemon)
            .iter()
            .filter(|l| l.starts_with("processed "))
            .count()
    };
    assert!(
        mine(&a) > 0 && mine(&b) > 0,
        "both daemons processed records"
    );
    // Each child checkpoints after its batch: wait until a's are written.
    let a_shards = app.setup.owned_by("a").await;
    let checkpointed = testkit::eventually(Duration::from_secs(10), || {
        let lines = a.lines();
        a_shards
            .iter()
            .all(|shard| after_last_child_checkpoint(&lines, shard))
    })
    .await;
    assert!(checkpointed, "{}", a.dump());

    a.signal("KILL");
    let killed = Instant::now();
    let after: Vec<String> = (0..20).map(|i| format!("takeover-{i}")).collect();
    for d in &after {
        app.put(d).await;
    }
    wait_processed(&[&a, &b], &after, Duration::from_secs(60)).await;
    let taken = app.setup.owned_by("b").await;
    assert_eq!(
        taken.len(),
        4,
        "b holds every lease: {:?}",
        app.setup.owners().await
    );
    eprintln!(
        "after kill -9 of one daemon, the other processed every new record within {} ms",
        killed.elapsed().as_millis()
    );
    stop_timed(&mut b);
    let counts = processed(&[&a, &b]);
    for d in before.iter().chain(&after) {
        assert_eq!(counts.get(d), Some(&1), "{d}: {counts:?}");
    }
}

/// Whether the last `processed` line of `shard` in `lines` (a daemon's log) is followed by a
/// `checkpoint` of that shard.
fn after_last_child_checkpoint(lines: &[String], shard: &str) -> bool {
    let mut pending = false;
    for line in lines {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["shard_id"] != shard {
            continue;
        }
        match event["message"].as_str() {
            Some("child stderr")
                if event["line"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("processed ")) =>
            {
                pending = true
            }
            Some("checkpoint") => pending = false,
            _ => {}
        }
    }
    !pending
}

#[tokio::test]
async fn the_kclpy_sample_app_runs_unchanged() {
    let _serial = SERIAL.lock().await;
    let app = App::new("ml-sample", 1).await;
    // amazon-kclpy's own samples/sample_kclpy_app.py, as its sdist ships it.
    let sample = repo().join(".venv/share/amazon-kclpy-samples/sample_kclpy_app.py");
    assert!(
        sample.exists(),
        "{} missing: run scripts/dev-venv.sh",
        sample.display()
    );
    let command = format!(
        "{} {}",
        repo().join(".venv/bin/python").display(),
        sample.display()
    );
    let props = app.properties("s", &command, &[]);
    let http = format!("127.0.0.1:{}", testkit::free_port());
    let mut env = app.env();
    env.push(("HTTP_ADDR".into(), http.clone()));
    let mut daemon = app.daemon_with_env(&props, env);
    let mut last = String::new();
    for i in 0..5 {
        last = app.put(&format!("sample-{i}")).await.1;
    }
    // The sample checkpoints every 60 s or when asked to stop: wait until it has the records.
    let handed = testkit::eventually(Duration::from_secs(60), || {
        testkit::http_get(&http, "/metrics").is_some_and(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with("kinesis_consumer_records_processed_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
                >= 5.0
        })
    })
    .await;
    assert!(handed, "{}", daemon.dump());
    // The status page lists the child (pid, shard, state), and the health checks answer.
    let (code, body) = testkit::http_get(&http, "/status").expect("status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let children = status["children"].as_array().cloned().unwrap_or_default();
    assert_eq!(children.len(), 1, "{body}");
    let started = daemon.events("child process started");
    assert_eq!(
        children[0]["pid"],
        started.last().expect("started")["pid"],
        "{body}"
    );
    assert_eq!(children[0]["shard_id"], "shardId-000000000000", "{body}");
    assert!(
        ["idle", "processRecords"].contains(&children[0]["state"].as_str().unwrap_or_default()),
        "{body}"
    );
    assert_eq!(
        testkit::http_get(&http, "/healthz").map(|(c, _)| c),
        Some(200)
    );
    assert_eq!(
        testkit::http_get(&http, "/readyz").map(|(c, _)| c),
        Some(200)
    );
    stop_timed(&mut daemon);
    // Its shutdown_requested checkpointed the last record delivered...
    let checkpoints = field(&daemon.events("checkpoint"), "sequence_number");
    assert_eq!(checkpoints.last(), Some(&last), "{}", daemon.dump());
    // ... and what it wrote to standard error reached the log.
    let said = child_lines(&daemon).join("\n");
    for i in 0..5 {
        assert!(
            said.contains(&format!("Partition Key: sample-{i}")),
            "{said}"
        );
    }
    assert!(said.contains("Shutdown has been requested"), "{said}");
}

#[tokio::test]
async fn reads_that_bring_nothing_reach_the_child_when_the_properties_ask() {
    let _serial = SERIAL.lock().await;
    let app = App::new("ml-empty", 1).await;
    let props = app.properties(
        "e",
        &kclpy_command(),
        &["callProcessRecordsEvenForEmptyRecordList = true"],
    );
    let mut daemon = app.daemon(&props);
    let empty = |d: &ServiceProcess| {
        child_lines(d)
            .iter()
            .filter(|l| l.starts_with("empty batch "))
            .count()
    };
    let seen = testkit::eventually(Duration::from_secs(60), || empty(&daemon) >= 2).await;
    assert!(seen, "{}", daemon.dump());
    app.put("after-empty").await;
    wait_processed(
        &[&daemon],
        &["after-empty".to_string()],
        Duration::from_secs(60),
    )
    .await;
    stop_timed(&mut daemon);
}
