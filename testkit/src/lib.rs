//! Test support: starts the real local emulators (installed from `emulators/package.json` by
//! `npm ci --prefix emulators`; DynamoDB Local from Maven Central by `scripts/interop.sh`) on free
//! ports, and runs the service binaries as child processes whose log lines the tests read.
//! Everything started here is killed when its guard drops, also when a test panics.

pub mod fault_proxy;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};

pub use crate::fault_proxy::{FaultProxy, Rule};
use serde_json::Value;

pub const TEST_REGION: &str = "us-east-1";
pub const TEST_ACCESS_KEY: &str = "test";

/// Where `npm ci --prefix emulators` put the emulators (override with `EMULATORS_DIR`).
pub fn emulators_dir() -> PathBuf {
    let dir = std::env::var_os("EMULATORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../emulators"));
    let modules = dir.join("node_modules");
    let kinesis_mock = kinesis_mock_package();
    assert!(
        modules.join(&kinesis_mock).is_dir() && modules.join("dynalite").is_dir(),
        "emulators are not installed in {} (looked for {kinesis_mock} and dynalite): run \
         `npm ci --prefix emulators` first",
        modules.display()
    );
    modules
}

/// The folder of `emulators/node_modules` that [`Kind::KinesisMock`] runs: `kinesis-local`
/// (kinesis-mock 0.6.2) unless `KINESIS_MOCK_PACKAGE` names another, such as
/// `kinesis-local-0.5.2` (the version LocalStack 4.14.0 installs). `scripts/test.sh` runs the
/// consumer's Kinesis suites once with each.
pub fn kinesis_mock_package() -> String {
    std::env::var("KINESIS_MOCK_PACKAGE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "kinesis-local".to_string())
}

/// Where `scripts/interop.sh` (Maven) put DynamoDB Local: `lib/` (jars) and `native/`
/// (sqlite4java). Override with `DYNAMODB_LOCAL_DIR`.
pub fn dynamodb_local_dir() -> PathBuf {
    let dir = std::env::var_os("DYNAMODB_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../interop/java/dynamodb-local/target")
        });
    assert!(
        dir.join("lib").is_dir() && dir.join("native").is_dir(),
        "DynamoDB Local is not built in {}: run scripts/interop.sh (needs Java 17+ and Maven)",
        dir.display()
    );
    dir
}

/// AWS's EC2 instance metadata mock (`amazon-ec2-metadata-mock`), started on a free port with
/// IMDSv2 required, as an EC2 instance's metadata service answers: the process and its
/// endpoint (for `AWS_EC2_METADATA_SERVICE_ENDPOINT`), once it accepts connections.
/// `scripts/test.sh` builds it into `.tools/bin`; `EC2_METADATA_MOCK` names another binary.
pub fn ec2_metadata_mock() -> (ServiceProcess, String) {
    let binary = std::env::var_os("EC2_METADATA_MOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/ec2-metadata-mock")
        });
    assert!(
        binary.is_file(),
        "the EC2 metadata mock is not built at {}: run scripts/test.sh, or GOBIN=$PWD/.tools/bin \
         go install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@v1.13.0",
        binary.display()
    );
    let port = free_port();
    let process =
        ServiceProcess::spawn_with_args(&binary, &["--port", &port.to_string(), "--imdsv2"], &[]);
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the EC2 metadata mock did not listen on {addr} within 20 s: {}",
            process.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (process, format!("http://{addr}"))
}

/// The DynamoDB emulator for lease tables, chosen with `TEST_DYNAMODB`: `dynalite` (the default,
/// installed by npm) or `dynamodb-local` (the engine LocalStack runs; `scripts/interop.sh` runs
/// the leased tests again with it).
pub fn lease_table_emulator() -> Kind {
    match std::env::var("TEST_DYNAMODB").as_deref() {
        Err(_) | Ok("") | Ok("dynalite") => Kind::Dynalite,
        Ok("dynamodb-local") => Kind::DynamoDbLocal,
        Ok(other) => panic!("TEST_DYNAMODB={other:?}: expected dynalite or dynamodb-local"),
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free local port")
}

/// A name no other test run uses.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Which emulator to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// kinesis-mock, the engine LocalStack runs: correct resharding, slow ingest.
    KinesisMock,
    /// kinesalite: fast, but wrong on resharding; for throughput benchmarks.
    Kinesalite,
    /// dynalite: DynamoDB on LevelDB, from npm.
    Dynalite,
    /// DynamoDB Local: AWS's own DynamoDB emulator (Java), the one LocalStack runs.
    DynamoDbLocal,
}

/// A running emulator; killed on drop.
pub struct Emulator {
    child: Child,
    pub kind: Kind,
    pub port: u16,
    /// The emulator's own output, for diagnosing a failed start.
    pub log_path: PathBuf,
}

impl Emulator {
    pub fn start(kind: Kind) -> Self {
        Self::start_on(kind, free_port(), &[])
    }

    /// Starts the emulator on `port` with extra environment (kinesis-mock reads its settings,
    /// such as `INITIALIZE_STREAMS`, from there).
    pub fn start_on(kind: Kind, port: u16, extra_env: &[(&str, &str)]) -> Self {
        let mut cmd = match kind {
            Kind::KinesisMock => {
                let pkg = emulators_dir().join(kinesis_mock_package());
                let mut c = Command::new("node");
                c.arg(pkg.join("main.js"))
                    .env("KINESIS_MOCK_CERT_PATH", pkg.join("server.json"))
                    .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
                    .env("KINESIS_MOCK_TLS_PORT", free_port().to_string())
                    .env("LOG_LEVEL", "WARN");
                for op in [
                    "CREATE_STREAM_DURATION",
                    "DELETE_STREAM_DURATION",
                    "UPDATE_SHARD_COUNT_DURATION",
                    "SPLIT_SHARD_DURATION",
                    "MERGE_SHARDS_DURATION",
                    "REGISTER_STREAM_CONSUMER_DURATION",
                    "START_STREAM_ENCRYPTION_DURATION",
                    "STOP_STREAM_ENCRYPTION_DURATION",
                    "DEREGISTER_STREAM_CONSUMER_DURATION",
                ] {
                    c.env(op, "0ms");
                }
                c
            }
            Kind::Kinesalite => {
                let mut c = Command::new("node");
                c.arg(emulators_dir().join("kinesalite/cli.js"))
                    .args(["--port", &port.to_string()])
                    .args([
                        "--createStreamMs",
                        "0",
                        "--deleteStreamMs",
                        "0",
                        "--updateStreamMs",
                        "0",
                    ]);
                c
            }
            Kind::Dynalite => {
                let mut c = Command::new("node");
                c.arg(emulators_dir().join("dynalite/cli.js"))
                    .args(["--port", &port.to_string()])
                    .args([
                        "--createTableMs",
                        "0",
                        "--deleteTableMs",
                        "0",
                        "--updateTableMs",
                        "0",
                    ]);
                c
            }
            Kind::DynamoDbLocal => {
                let dir = dynamodb_local_dir();
                let mut c = Command::new("java");
                c.arg(format!(
                    "-Djava.library.path={}",
                    dir.join("native").display()
                ))
                // A class path wildcard, expanded by java itself (no shell sees it).
                .arg("-cp")
                .arg(dir.join("lib").join("*"))
                .arg("software.amazon.dynamodb.services.local.main.ServerRunner")
                .args([
                    "-inMemory",
                    "-disableTelemetry",
                    "-port",
                    &port.to_string(),
                ]);
                c
            }
        };
        cmd.envs(extra_env.iter().copied());
        // Run the emulator under a small shell that kills it when our end of its stdin closes: that
        // happens when the guard drops, and also when the test process dies in any way, so no
        // emulator outlives the tests (the shared ones are never dropped).
        let log_path = std::env::temp_dir().join(format!(
            "{}.log",
            unique_name(&format!("{kind:?}").to_lowercase())
        ));
        let log_file = std::fs::File::create(&log_path).expect("create emulator log file");
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let envs: Vec<_> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                r#""$@" & child=$!; read -r _ignored; kill -9 "$child" 2>/dev/null; wait "$child""#,
            )
            .arg("sh")
            .arg(program)
            .args(args)
            .envs(envs)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(
                log_file
                    .try_clone()
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {kind:?} (is node or java installed?): {e}"));
        let emulator = Self {
            child,
            kind,
            port,
            log_path,
        };
        emulator.wait_ready(Duration::from_secs(60));
        emulator
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let path = match self.kind {
            Kind::KinesisMock => "/healthcheck",
            _ => "/",
        };
        while Instant::now() < deadline {
            if let Some(status) = http_get_status(self.port, path) {
                // kinesalite, dynalite and DynamoDB Local answer a bare GET with 4xx: they are up.
                if self.kind != Kind::KinesisMock || status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{:?} did not become ready on port {} within {limit:?}; its log: {}",
            self.kind,
            self.port,
            self.log_path.display()
        );
    }

    /// SDK configuration pointing at this emulator with dummy credentials.
    pub fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(TEST_REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_kinesis::config::SharedCredentialsProvider::new(
                test_credentials(),
            ))
            .build()
    }

    pub fn kinesis(&self) -> aws_sdk_kinesis::Client {
        aws_sdk_kinesis::Client::new(&self.sdk_config())
    }

    /// A DynamoDB client for this emulator (dynalite or DynamoDB Local).
    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // Closing stdin makes the wrapper shell kill the emulator and exit.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The credentials every client of [`Emulator::sdk_config`] signs with.
pub fn test_credentials() -> aws_sdk_kinesis::config::Credentials {
    aws_sdk_kinesis::config::Credentials::new(TEST_ACCESS_KEY, "test", None, None, "testkit")
}

/// One emulator of each kind per test binary, started on first use and stopped when the test
/// process exits. Tests sharing it use unique stream and table names.
pub fn shared(kind: Kind) -> &'static Emulator {
    static KINESIS_MOCK: OnceLock<Emulator> = OnceLock::new();
    static KINESALITE: OnceLock<Emulator> = OnceLock::new();
    static DYNALITE: OnceLock<Emulator> = OnceLock::new();
    static DYNAMODB_LOCAL: OnceLock<Emulator> = OnceLock::new();
    let cell = match kind {
        Kind::KinesisMock => &KINESIS_MOCK,
        Kind::Kinesalite => &KINESALITE,
        Kind::Dynalite => &DYNALITE,
        Kind::DynamoDbLocal => &DYNAMODB_LOCAL,
    };
    cell.get_or_init(|| Emulator::start(kind))
}

fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// `GET path` from `addr` (`127.0.0.1:8080`): the status and the body, or `None` when nothing
/// answered. Reads until the server closes (`Connection: close`).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    // The services answer small bodies with a length; chunked ones are decoded here.
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the Prometheus series `name{labels}` (labels exactly as written, in order) in
/// a `/metrics` text, or `None` if absent.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Environment for a service process talking to the given endpoint, nothing inherited from the
/// developer's AWS setup.
pub fn service_env(endpoint: &str, stream: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", TEST_REGION),
        ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("STREAM_NAME", stream),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Like [`service_env`], for a service that also uses DynamoDB (the leased consumer): Kinesis
/// and DynamoDB each get their own endpoint through the SDK's per-service variables.
pub fn service_env_with_dynamo(
    kinesis_endpoint: &str,
    dynamo_endpoint: &str,
    stream: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = service_env(kinesis_endpoint, stream)
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .collect();
    env.push((
        "AWS_ENDPOINT_URL_KINESIS".to_string(),
        kinesis_endpoint.to_string(),
    ));
    env.push((
        "AWS_ENDPOINT_URL_DYNAMODB".to_string(),
        dynamo_endpoint.to_string(),
    ));
    env
}

/// [`service_env`] plus the given settings (later ones win).
pub fn env_with(endpoint: &str, stream: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = service_env(endpoint, stream);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Creates a stream and waits until it is ACTIVE.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("CreateStream");
    let never = tokio_util::sync::CancellationToken::new();
    kinesis_common::kinesis::wait_for_stream(client, name, Duration::from_secs(30), &never)
        .await
        .expect("stream becomes ACTIVE");
}

/// Creates an on-demand DynamoDB table whose hash key `key` is a string, as the Java KCL creates
/// its tables (lease table, `-CoordinatorState`, `-WorkerMetricStats`); it does not wait.
pub async fn create_hash_key_table(client: &aws_sdk_dynamodb::Client, name: &str, key: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    client
        .create_table()
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("CreateTable");
    wait_for_active_table(client, name).await;
}

/// Waits until `name` is ACTIVE: dynalite answers CreateTable before the table takes writes
/// (even with `--createTableMs 0` it turns ACTIVE on a later turn of its event loop, and a
/// `PutItem` in between gets `ResourceNotFoundException`).
pub async fn wait_for_active_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    use aws_sdk_dynamodb::types::TableStatus;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .ok()
            .and_then(|out| out.table.and_then(|t| t.table_status));
        if status == Some(TableStatus::Active) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "table {name} not ACTIVE within 30 s (last status {status:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Puts one record with `PutRecord`, as a client other than the producer would.
pub async fn put_record(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    partition_key: &str,
    data: impl Into<Vec<u8>>,
) -> aws_sdk_kinesis::operation::put_record::PutRecordOutput {
    client
        .put_record()
        .stream_name(stream)
        .partition_key(partition_key)
        .data(aws_sdk_kinesis::primitives::Blob::new(data))
        .send()
        .await
        .expect("PutRecord")
}

/// Creates a one-shard stream and returns the id of its shard.
pub async fn create_single_shard_stream(client: &aws_sdk_kinesis::Client, name: &str) -> String {
    create_stream(client, name, 1).await;
    kinesis_common::kinesis::list_shards(client, name)
        .await
        .expect("ListShards")[0]
        .shard_id()
        .to_string()
}

/// Every shard of `stream` (open and closed) with its inclusive hash key range.
pub async fn shard_ranges(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> HashMap<String, (u128, u128)> {
    kinesis_common::kinesis::list_shards(client, stream)
        .await
        .expect("ListShards")
        .iter()
        .map(|s| {
            let range = kinesis_common::kinesis::hash_range(s).expect("hash range");
            (s.shard_id().to_string(), range)
        })
        .collect()
}

/// Splits a full-range shard into two halves of the hash key space.
pub async fn split_in_half(client: &aws_sdk_kinesis::Client, stream: &str, shard_id: &str) {
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard_id)
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await
        .expect("SplitShard");
}

/// Splits up to `count` open shards of `stream` at the middle of their ranges, one at a time,
/// each time waiting until the stream is `ACTIVE` again (a stream being resharded takes no
/// other split).
pub async fn split_open_shards(client: &aws_sdk_kinesis::Client, stream: &str, count: usize) {
    let open: Vec<_> = kinesis_common::kinesis::list_shards(client, stream)
        .await
        .expect("ListShards")
        .into_iter()
        .filter(kinesis_common::kinesis::is_open)
        .take(count)
        .collect();
    for shard in open {
        let (start, end) = kinesis_common::kinesis::hash_range(&shard).expect("hash range");
        client
            .split_shard()
            .stream_name(stream)
            .shard_to_split(shard.shard_id())
            .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
            .send()
            .await
            .expect("SplitShard");
        let never = tokio_util::sync::CancellationToken::new();
        kinesis_common::kinesis::wait_for_stream(client, stream, Duration::from_secs(30), &never)
            .await
            .expect("ACTIVE again after the split");
    }
}

/// Polls `condition` every 50 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service binary running as a child process; its stdout and stderr lines are collected.
/// Killed on drop.
pub struct ServiceProcess {
    child: Child,
    pub name: String,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    pub fn spawn(binary: &Path, env: &[(String, String)]) -> Self {
        Self::spawn_with_args(binary, &[], env)
    }

    /// Like [`spawn`](Self::spawn), with arguments (a Java program: `java -cp ... Main`); the
    /// process is named after its last argument.
    pub fn spawn_with_args(binary: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().expect("piped stdout"), lines.clone());
        collect(child.stderr.take().expect("piped stderr"), stderr.clone());
        Self {
            child,
            name: args.last().map(|a| a.to_string()).unwrap_or_else(|| {
                binary
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
            lines,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Standard output lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Standard error lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The JSON log events (one object a line) whose `message` is `message`, in order.
    pub fn events(&self, message: &str) -> Vec<Value> {
        events(&self.lines(), message)
    }

    /// The distinct values of `field` over the events whose `message` is `message`.
    pub fn field_set(&self, message: &str, field_name: &str) -> HashSet<String> {
        field(&self.events(message), field_name)
            .into_iter()
            .collect()
    }

    /// Waits until the ids logged as `record received` are exactly `expected`.
    pub async fn wait_until_received(&self, expected: &HashSet<String>, limit: Duration) -> bool {
        eventually(limit, || {
            self.field_set("record received", "id") == *expected
        })
        .await
    }

    /// The shards a leased-mode consumer believes it holds, from its log: acquired and not
    /// since lost, released or handed to another worker.
    pub fn held_leases(&self) -> HashSet<String> {
        let mut held = HashSet::new();
        for line in self.lines() {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let shard = event["shard_id"].as_str().unwrap_or_default().to_string();
            match event["message"].as_str() {
                Some("lease acquired") => {
                    held.insert(shard);
                }
                Some(
                    "lease lost" | "lease released" | "lease handed off" | "lease handed over",
                ) => {
                    held.remove(&shard);
                }
                _ => {}
            }
        }
        held
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) with the system's `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits for the process to end, at most `limit`; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads drain what the process wrote last.
                std::thread::sleep(Duration::from_millis(100));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the process exits with `code` within `limit`, showing its output if not.
    pub fn expect_exit(&mut self, limit: Duration, code: i32) {
        let status = self.wait_exit(limit);
        assert_eq!(status.and_then(|s| s.code()), Some(code), "{}", self.dump());
    }

    /// Sends SIGTERM and asserts the process exits 0 within 5 seconds, as the services promise.
    pub fn stop(&mut self) {
        self.signal("TERM");
        self.expect_exit(Duration::from_secs(5), 0);
    }

    /// Everything the process printed, for a failure message.
    pub fn dump(&self) -> String {
        let out = self.lines();
        let err = self.stderr_lines();
        let tail = |v: &[String]| v[v.len().saturating_sub(40)..].join("\n");
        format!(
            "--- {} stdout (last 40 of {}) ---\n{}\n--- stderr ---\n{}",
            self.name,
            out.len(),
            tail(&out),
            tail(&err)
        )
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut v) = into.lock() {
                v.push(line);
            }
        }
    });
}

/// The JSON log events among `lines` whose `message` is `message`, in order.
pub fn events(lines: &[String], message: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("message").and_then(Value::as_str) == Some(message))
        .collect()
}

/// The string field `field` of each event.
pub fn field(events: &[Value], field: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.get(field).and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Asserts that every record `consumer` logged as received carries the sequence number
/// `producer` logged as sent for the same message id.
pub fn assert_received_as_sent(producer: &ServiceProcess, consumer: &ServiceProcess) {
    let sent: HashMap<String, String> = producer
        .events("record sent")
        .iter()
        .filter_map(|e| {
            Some((
                e.get("id")?.as_str()?.to_string(),
                e.get("sequence_number")?.as_str()?.to_string(),
            ))
        })
        .collect();
    for e in consumer.events("record received") {
        let id = e["id"].as_str().unwrap_or_default();
        assert_eq!(
            sent.get(id).map(String::as_str),
            e["sequence_number"].as_str(),
            "message {id}: received under another sequence number than it was sent"
        );
    }
}

/// Runs `binary` with `var` set to bytes that are not UTF-8 (and nothing else that could reach
/// AWS); returns its exit code and standard error once it ends (within 10 s).
pub fn run_with_non_utf8_var(binary: &Path, var: &str) -> (Option<i32>, String) {
    use std::os::unix::ffi::OsStringExt;
    let mut child = Command::new(binary)
        .env_clear()
        .envs(service_env("http://127.0.0.1:9", "s"))
        .env(var, std::ffi::OsString::from_vec(vec![b'x', 0xff, 0xfe]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("collect output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Path of a sibling binary of the workspace (built by `cargo test --workspace`).
pub fn sibling_binary(known: &str, name: &str) -> PathBuf {
    let path = Path::new(known).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` so every binary is built",
        path.display()
    );
    path
}

/// Every `DataMessage` stored in the stream: its id and each (shard id, sequence number) it is
/// stored under (more than one when it was stored twice).
pub async fn stored_messages(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> std::collections::HashMap<String, Vec<(String, String)>> {
    let mut stored: std::collections::HashMap<String, Vec<(String, String)>> =
        std::collections::HashMap::new();
    for (shard, r) in read_stream(client, stream).await {
        let m = kinesis_common::message::DataMessage::from_json(r.data().as_ref())
            .expect("the stream holds DataMessages");
        stored
            .entry(m.id.to_string())
            .or_default()
            .push((shard, r.sequence_number().to_string()));
    }
    stored
}

/// Like [`stored_messages`], for a stream where each message must be stored once: id -> (shard
/// id, sequence number); panics on a message stored twice.
pub async fn stored_once(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> std::collections::HashMap<String, (String, String)> {
    stored_messages(client, stream)
        .await
        .into_iter()
        .map(|(id, mut copies)| {
            assert_eq!(copies.len(), 1, "{id} is stored {copies:?}");
            (id, copies.remove(0))
        })
        .collect()
}

/// Every record stored in the stream, shard by shard from `TRIM_HORIZON`, with its shard id.
pub async fn read_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Vec<(String, aws_sdk_kinesis::types::Record)> {
    let mut found = Vec::new();
    for shard in kinesis_common::kinesis::list_shards(client, stream)
        .await
        .expect("ListShards")
    {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("GetShardIterator")
            .shard_iterator()
            .map(str::to_string);
        while let Some(it) = iterator {
            let out = client
                .get_records()
                .shard_iterator(it)
                .send()
                .await
                .expect("GetRecords");
            found.extend(
                out.records()
                    .iter()
                    .map(|r| (shard.shard_id().to_string(), r.clone())),
            );
            // An empty answer is not the end while the shard reports records behind it.
            if out.records().is_empty() && out.millis_behind_latest().unwrap_or(0) == 0 {
                break;
            }
            iterator = out.next_shard_iterator().map(str::to_string);
        }
    }
    found
}

/// A headless Chromium (Debian's `chromium`, or `CHROMIUM_PATH`) driven by playwright-core
/// through `browser/driver.mjs`, one JSON command a line; closed on drop.
pub struct Browser {
    child: Child,
    stdin: std::process::ChildStdin,
    answers: std::sync::mpsc::Receiver<String>,
}

impl Browser {
    /// Starts the browser; panics with what is missing if the driver or Chromium are not
    /// installed (`npm ci --prefix browser`, `apt-get install chromium`).
    pub fn start() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../browser");
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "the browser driver is not installed: run `npm ci --prefix browser` first"
        );
        let mut child = Command::new("node")
            .arg(dir.join("driver.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node browser/driver.mjs");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut browser = Self {
            child,
            stdin,
            answers,
        };
        browser
            .answer(Duration::from_secs(60))
            .expect("the browser driver started (is Debian's chromium installed?)");
        browser
    }

    fn answer(&mut self, limit: Duration) -> Result<Value, String> {
        let line = self
            .answers
            .recv_timeout(limit)
            .map_err(|e| format!("no answer from the browser driver: {e}"))?;
        let answer: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if answer["ok"] == true {
            Ok(answer["value"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or(&line).to_string())
        }
    }

    fn command(&mut self, command: Value, limit: Duration) -> Result<Value, String> {
        writeln!(self.stdin, "{command}").map_err(|e| e.to_string())?;
        self.answer(limit)
    }

    pub fn goto(&mut self, url: &str) -> Result<(), String> {
        self.command(
            serde_json::json!({"cmd": "goto", "url": url}),
            Duration::from_secs(40),
        )
        .map(|_| ())
    }

    /// The rendered text of the first element matching `selector`.
    pub fn text(&mut self, selector: &str) -> Result<String, String> {
        self.command(
            serde_json::json!({"cmd": "text", "selector": selector}),
            Duration::from_secs(20),
        )
        .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    /// Waits until the text of `selector` contains `text` (or, with `absent`, no longer does),
    /// at most `limit`; returns that text, or the last one seen in the error.
    pub fn wait_for(
        &mut self,
        selector: &str,
        text: &str,
        absent: bool,
        limit: Duration,
    ) -> Result<String, String> {
        self.command(
            serde_json::json!({"cmd": "waitFor", "selector": selector, "contains": text,
                "absent": absent, "timeoutMs": limit.as_millis() as u64}),
            limit + Duration::from_secs(10),
        )
        .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    /// The attribute `name` of the first element matching `selector` (`None` when no element
    /// matches or it has no such attribute).
    pub fn attr(&mut self, selector: &str, name: &str) -> Result<Option<String>, String> {
        self.command(
            serde_json::json!({"cmd": "attr", "selector": selector, "name": name}),
            Duration::from_secs(20),
        )
        .map(|v| v.as_str().map(str::to_string))
    }

    /// How many elements match `selector`.
    pub fn count(&mut self, selector: &str) -> Result<u64, String> {
        self.command(
            serde_json::json!({"cmd": "count", "selector": selector}),
            Duration::from_secs(20),
        )
        .map(|v| v.as_u64().unwrap_or_default())
    }

    pub fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        self.command(
            serde_json::json!({"cmd": "screenshot", "path": path}),
            Duration::from_secs(30),
        )
        .map(|_| ())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", serde_json::json!({"cmd": "close"}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tracing events of the current thread, captured as the services print them (JSON, one
/// line each), for tests that run service code in-process.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

/// Keeps a [`LogCapture`] capturing; it stops when this drops.
pub struct CaptureGuard {
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Captures INFO and above on this thread (and the tasks a current-thread runtime runs on
    /// it) until the guard drops.
    pub fn start() -> (Self, CaptureGuard) {
        // tracing caches whether a call site is wanted, and with a single scoped subscriber it
        // asks only the thread that first reaches it: another test reaching a call site first,
        // on a thread without a subscriber, would turn it off here too. With two subscribers
        // alive it asks both each time.
        let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let guard = CaptureGuard {
            _default: tracing::subscriber::set_default(subscriber),
            _second: second,
        };
        (logs, guard)
    }

    /// The events with this message, as JSON objects.
    pub fn events(&self, message: &str) -> Vec<Value> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}
