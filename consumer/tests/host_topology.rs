//! The docker-compose topology, on the host: `scripts/run-local.sh` starts kinesis-mock and
//! dynalite from `emulators/`, runs `localstack-init/create-stream.sh` with the init container's
//! compose environment, then the real producer and consumer binaries with theirs. The producer
//! sends a fixed number of records and exits; the consumer must log `record received` for
//! exactly the records the producer logged as `record sent`.
//!
//! The init script alone: its deadline holds when Kinesis accepts calls and never answers.
//!
//! Needs node (the emulators; `npm ci --prefix emulators` runs if they are missing), python3
//! (the script installs requirements-dev.txt into .venv on first use) and curl. Run with
//! `cargo test --workspace` so the producer binary is built next to the consumer.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{events, field, sibling_binary, unique_name, FaultProxy, Kind, Rule};

const COUNT: usize = 5;
/// Start-up (first run: venv and emulator install), stream creation, 5 records, shutdown.
const DEADLINE: Duration = Duration::from_secs(180);

/// The script and everything it started (its process group): stopped on drop unless it ended.
struct ScriptGuard {
    child: Child,
}

impl ScriptGuard {
    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for ScriptGuard {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SIGTERM lets the script's trap stop its children; SIGKILL whatever is left.
        self.signal_group("-TERM");
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the consumer crate sits in the workspace")
        .to_path_buf()
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn tail(path: &Path, n: usize) -> String {
    let lines = read_lines(path);
    let start = lines.len().saturating_sub(n);
    format!(
        "--- {} (last {} lines) ---\n{}",
        path.display(),
        lines.len() - start,
        lines[start..].join("\n")
    )
}

fn diagnostics(run_dir: &Path) -> String {
    [
        "run-local.out",
        "localstack-init.log",
        "producer.log",
        "consumer.log",
        "kinesis-mock.log",
    ]
    .iter()
    .map(|f| tail(&run_dir.join(f), 30))
    .collect::<Vec<_>>()
    .join("\n")
}

/// id -> (shard_id, sequence_number) of the events with `message`.
fn records(lines: &[String], message: &str) -> (Vec<String>, BTreeMap<String, (String, String)>) {
    let found = events(lines, message);
    let ids = field(&found, "id");
    let by_id = found
        .iter()
        .filter_map(|e| {
            let get = |k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_string);
            Some((get("id")?, (get("shard_id")?, get("sequence_number")?)))
        })
        .collect();
    (ids, by_id)
}

#[test]
fn run_local_delivers_every_produced_record_to_the_consumer() {
    let consumer = PathBuf::from(env!("CARGO_BIN_EXE_consumer"));
    let producer = sibling_binary(env!("CARGO_BIN_EXE_consumer"), "producer");
    let script = repo_root().join("scripts/run-local.sh");
    let stream = unique_name("host-topology");
    let run_dir = std::env::temp_dir().join(&stream);
    std::fs::create_dir_all(&run_dir).expect("create RUN_DIR");
    let out = File::create(run_dir.join("run-local.out")).expect("create run-local.out");

    let child = Command::new("bash")
        .arg(&script)
        .current_dir(repo_root())
        .env("PRODUCER_BIN", &producer)
        .env("CONSUMER_BIN", &consumer)
        .env("PRODUCER_COUNT", COUNT.to_string())
        .env("PRODUCER_INTERVAL_MS", "100")
        .env("LOG_FORMAT", "json")
        .env("STREAM_NAME", &stream)
        .env("RUN_DIR", &run_dir)
        .env("FOLLOW_LOGS", "0")
        .env("CONSUME_TIMEOUT_SECONDS", "60")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup run-local.out"))
        .stderr(out)
        // Its own process group, so the guard can stop the script and all it started.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
    let mut guard = ScriptGuard { child };

    let started = Instant::now();
    let status = loop {
        match guard.child.try_wait().expect("wait for run-local.sh") {
            Some(status) => break status,
            None if started.elapsed() > DEADLINE => panic!(
                "run-local.sh did not finish within {DEADLINE:?}\n{}",
                diagnostics(&run_dir)
            ),
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(
        status.success(),
        "run-local.sh failed ({status})\n{}",
        diagnostics(&run_dir)
    );

    let (sent_ids, sent) = records(&read_lines(&run_dir.join("producer.log")), "record sent");
    let (received_ids, received) = records(
        &read_lines(&run_dir.join("consumer.log")),
        "record received",
    );
    assert_eq!(
        sent_ids.len(),
        COUNT,
        "the producer logged {} `record sent` events, expected {COUNT}\n{}",
        sent_ids.len(),
        diagnostics(&run_dir)
    );
    let mut expected = sent_ids.clone();
    expected.sort();
    expected.dedup();
    assert_eq!(
        expected.len(),
        COUNT,
        "the producer logged duplicate ids: {sent_ids:?}"
    );
    let mut got = received_ids.clone();
    got.sort();
    assert_eq!(
        got,
        expected,
        "the consumer must log `record received` exactly once for each id the producer sent\n{}",
        diagnostics(&run_dir)
    );
    // Same record, not just the same id: shard and sequence number as the producer was told.
    assert_eq!(
        received, sent,
        "shard_id / sequence_number differ between producer and consumer"
    );
    // The compose file runs the consumer in leased mode: it took leases and checkpointed.
    let consumer_log = read_lines(&run_dir.join("consumer.log"));
    for event in ["lease acquired", "checkpoint", "lease released"] {
        assert!(
            !testkit::events(&consumer_log, event).is_empty(),
            "no `{event}` in the consumer log\n{}",
            diagnostics(&run_dir)
        );
    }

    let _ = std::fs::remove_dir_all(&run_dir);
}

/// The dev tools' bin directory (the AWS CLI the init script runs on the host).
fn dev_venv_bin() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/dev-venv.sh"))
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/dev-venv.sh");
    assert!(out.status.success(), "scripts/dev-venv.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// On a first start LocalStack accepts Kinesis calls and answers only once its engine is
/// installed. The init container's deadline must hold all the same: every AWS CLI call is made
/// once, with timeouts no longer than the time left (a CLI call used to be allowed 60 s per
/// attempt, and several attempts).
#[test]
fn the_init_script_gives_up_at_its_deadline_when_kinesis_never_answers() {
    const INIT_TIMEOUT: Duration = Duration::from_secs(4);
    // The AWS CLI (Python) takes a second or two to start on a loaded machine; the old script
    // needed at least 60 s here.
    const MARGIN: Duration = Duration::from_secs(20);
    let aws = dev_venv_bin().join("aws");
    let emulator = testkit::shared(Kind::KinesisMock);
    let proxy = FaultProxy::start(&emulator.endpoint());
    proxy.set(vec![Rule::hang()]);
    let run_dir = std::env::temp_dir().join(unique_name("init-deadline"));
    std::fs::create_dir_all(&run_dir).expect("create a temporary folder");
    let log = run_dir.join("localstack-init.log");

    let started = Instant::now();
    let child = Command::new("bash")
        .arg(repo_root().join("localstack-init/create-stream.sh"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &run_dir)
        .env("AWS_CLI", &aws)
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .env("AWS_REGION", testkit::TEST_REGION)
        .env("AWS_ACCESS_KEY_ID", testkit::TEST_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("STREAM_NAME", unique_name("init-deadline"))
        .env("INIT_TIMEOUT_SECONDS", INIT_TIMEOUT.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("create the log"))
        .process_group(0)
        .spawn()
        .expect("start create-stream.sh");
    let mut guard = ScriptGuard { child };
    let status = loop {
        match guard.child.try_wait().expect("wait for create-stream.sh") {
            Some(status) => break status,
            None if started.elapsed() > INIT_TIMEOUT + MARGIN => panic!(
                "create-stream.sh still running {:?} after it started, with a {INIT_TIMEOUT:?} \
                 deadline\n{}",
                started.elapsed(),
                tail(&log, 20)
            ),
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let took = started.elapsed();
    let lines = read_lines(&log);
    assert_eq!(status.code(), Some(1), "{}", tail(&log, 20));
    assert!(
        took >= INIT_TIMEOUT,
        "gave up after {took:?}, before its deadline"
    );
    assert!(
        proxy.faults("DescribeStreamSummary") >= 1,
        "the script never reached Kinesis\n{}",
        tail(&log, 20)
    );
    let last = lines.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("is not ACTIVE after 4s (INIT_TIMEOUT_SECONDS); last: ")
            && last.to_lowercase().contains("timeout"),
        "the last line must name the deadline and the last error: {last:?}"
    );
    let _ = std::fs::remove_dir_all(&run_dir);
}
