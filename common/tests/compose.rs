//! Checks docker-compose.yml against the variables the services actually read
//! (`kinesis_common::config`), so the compose file cannot drift from the code:
//!
//! - `producer` and `consumer` set only variables they read (their own, shared or standard AWS /
//!   `RUST_LOG` names), and the values there are accepted by the config loader;
//! - the init container creates the stream the services use, with the same region, access key
//!   and endpoint (LocalStack keys streams by account and region);
//! - both services start only after `localstack-init` completed successfully;
//! - `consumer` can be scaled (no `container_name`, no fixed host port);
//! - `localstack` runs the AWS services the stack needs, has a health check the init container
//!   waits on, and is published on loopback only (it has no authentication);
//! - the init container's deadline is a host variable with a default that fits a first start;
//! - every shell script and every file a Linux container reads is checked out with LF line
//!   endings on every platform (`.gitattributes`; a CRLF `create-stream.sh` dies in bash).
//!
//! Values are checked as written and after compose-style interpolation with nothing set on the
//! host (`${VAR:-default}` becomes `default`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kinesis_common::config::vars::{Service, STANDARD_VARS, STREAM_NAME};
use kinesis_common::config::{ConsumerSettings, ProducerSettings, RawConfig};
use serde_yaml::Value;

const INIT: &str = "localstack-init";
const LOCALSTACK: &str = "localstack";
const SERVICES: [(&str, Service); 2] = [
    ("producer", Service::Producer),
    ("consumer", Service::Consumer),
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose_path() -> PathBuf {
    repo_root().join("docker-compose.yml")
}

fn compose() -> Value {
    let path = compose_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut value: Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    // `<<: [*aws-env, ...]` merge keys, as docker compose applies them.
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
    value
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

fn scalar(value: &Value, what: &str) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => panic!("{what}: expected a scalar, found {other:?}"),
    }
}

/// A service's `environment:` block as written: name -> value (`None`: passed through from the
/// host, i.e. `NAME` without a value).
fn environment(compose: &Value, name: &str) -> BTreeMap<String, Option<String>> {
    let mut vars = BTreeMap::new();
    match service(compose, name).get("environment") {
        None => {}
        Some(Value::Mapping(map)) => {
            for (key, value) in map {
                let key = scalar(key, &format!("services.{name}.environment key"))
                    .unwrap_or_else(|| panic!("services.{name}.environment has an empty key"));
                let value = scalar(value, &format!("services.{name}.environment.{key}"));
                vars.insert(key, value);
            }
        }
        Some(Value::Sequence(items)) => {
            for item in items {
                let item =
                    scalar(item, &format!("services.{name}.environment item")).unwrap_or_default();
                match item.split_once('=') {
                    Some((k, v)) => vars.insert(k.to_string(), Some(v.to_string())),
                    None => vars.insert(item, None),
                };
            }
        }
        Some(other) => {
            panic!("services.{name}.environment is neither a mapping nor a list: {other:?}")
        }
    }
    vars
}

/// Compose interpolation with an empty host environment: `${V:-d}` / `${V-d}` give `d`,
/// `${V}` / `$V` give "", `$$` gives `$`. `${V:?msg}` fails: the file must work with no host
/// variables set.
fn interpolate(value: &str, where_: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after
                .find('}')
                .unwrap_or_else(|| panic!("{where_}: unterminated `${{` in {value:?}"));
            let expr = &after[..end];
            rest = &after[end + 1..];
            let name_end = expr
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_end);
            assert!(
                !name.is_empty(),
                "{where_}: bad interpolation `${{{expr}}}` in {value:?}"
            );
            if let Some(default) = op.strip_prefix(":-").or_else(|| op.strip_prefix('-')) {
                out.push_str(default);
            } else if op.starts_with(":?") || op.starts_with('?') {
                panic!("{where_}: `${{{expr}}}` requires {name} to be set on the host");
            } else {
                assert!(
                    op.is_empty(),
                    "{where_}: unsupported interpolation `${{{expr}}}`"
                );
            }
        } else {
            let name_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            assert!(name_end > 0, "{where_}: lone `$` in {value:?} (write `$$`)");
            rest = &rest[name_end..];
        }
    }
    out.push_str(rest);
    out
}

/// The values the service's process gets when nothing is set on the host.
fn effective_environment(compose: &Value, name: &str) -> BTreeMap<String, String> {
    environment(compose, name)
        .into_iter()
        .filter_map(|(k, v)| {
            let where_ = format!("services.{name}.environment.{k}");
            v.map(|v| (k, interpolate(&v, &where_)))
        })
        .collect()
}

#[test]
fn services_set_only_variables_they_read() {
    let compose = compose();
    let mut problems = Vec::new();
    for (name, svc) in SERVICES {
        let known: Vec<&str> = svc
            .vars()
            .iter()
            .map(|v| v.name)
            .chain(STANDARD_VARS.iter().copied())
            .collect();
        for var in environment(&compose, name).keys() {
            if !known.contains(&var.as_str()) {
                problems.push(format!(
                    "services.{name}.environment sets {var}, which {name} does not read \
                     (it reads: {})",
                    known.join(", ")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn init_container_creates_the_stream_the_services_use() {
    let compose = compose();
    let init = environment(&compose, INIT);
    let init_stream = init
        .get(STREAM_NAME.name)
        .cloned()
        .flatten()
        .unwrap_or_else(|| panic!("services.{INIT}.environment must set {}", STREAM_NAME.name));
    let init_effective = interpolate(&init_stream, "localstack-init STREAM_NAME");
    assert!(
        !init_effective.is_empty(),
        "the init container's STREAM_NAME is empty"
    );
    for (name, _) in SERVICES {
        let env = environment(&compose, name);
        let stream = env.get(STREAM_NAME.name).cloned().flatten();
        // Written identically, so a host override (STREAM_NAME=x docker compose up) reaches all.
        assert_eq!(
            stream.as_deref(),
            Some(init_stream.as_str()),
            "services.{name}.environment.STREAM_NAME must be written exactly as in {INIT} \
             ({init_stream:?}), so both use the stream the init container creates"
        );
    }
}

#[test]
fn services_start_after_the_init_container_succeeded() {
    let compose = compose();
    for (name, _) in SERVICES {
        let condition = service(&compose, name)
            .get("depends_on")
            .and_then(|d| d.get(INIT))
            .and_then(|d| d.get("condition"))
            .and_then(Value::as_str);
        assert_eq!(
            condition,
            Some("service_completed_successfully"),
            "services.{name}.depends_on.{INIT}.condition must be service_completed_successfully"
        );
    }
}

#[test]
fn init_container_and_services_share_region_key_and_endpoint() {
    let compose = compose();
    let init = effective_environment(&compose, INIT);
    let region = |env: &BTreeMap<String, String>| {
        env.get("AWS_REGION")
            .or_else(|| env.get("AWS_DEFAULT_REGION"))
            .cloned()
    };
    let endpoint = |env: &BTreeMap<String, String>| {
        env.get("AWS_ENDPOINT_URL_KINESIS")
            .or_else(|| env.get("AWS_ENDPOINT_URL"))
            .cloned()
    };
    let key = |env: &BTreeMap<String, String>| env.get("AWS_ACCESS_KEY_ID").cloned();
    assert!(
        region(&init).is_some(),
        "services.{INIT}.environment must set AWS_REGION"
    );
    assert!(
        key(&init).is_some(),
        "services.{INIT}.environment must set AWS_ACCESS_KEY_ID"
    );
    assert!(
        endpoint(&init).is_some(),
        "services.{INIT}.environment must set AWS_ENDPOINT_URL"
    );
    for (name, _) in SERVICES {
        let env = effective_environment(&compose, name);
        assert_eq!(
            region(&env),
            region(&init),
            "{name} and {INIT} must use the same region"
        );
        assert_eq!(
            key(&env),
            key(&init),
            "{name} and {INIT} must use the same AWS_ACCESS_KEY_ID (LocalStack reads it as the account)"
        );
        assert_eq!(
            endpoint(&env),
            endpoint(&init),
            "{name} and {INIT} must use the same Kinesis endpoint"
        );
    }
}

#[test]
fn consumer_can_be_scaled() {
    let compose = compose();
    let consumer = service(&compose, "consumer");
    assert!(
        consumer.get("container_name").is_none(),
        "services.consumer must not set container_name: `docker compose up --scale consumer=3` \
         needs a distinct name per container"
    );
    // Ports may be published only with the host port left to Docker ("127.0.0.1::8080"), so
    // scaled copies do not collide.
    for port in consumer
        .get("ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let text = port.as_str().unwrap_or_default();
        let parts: Vec<&str> = text.split(':').collect();
        let host_port = match parts.len() {
            3 => parts[1],
            2 => parts[0],
            _ => "",
        };
        assert!(
            host_port.is_empty() && parts.len() >= 2,
            "services.consumer publishes {text:?} with a fixed host port: scaled copies would collide"
        );
        assert!(
            text.starts_with("127.0.0.1:"),
            "services.consumer publishes {text:?} beyond loopback"
        );
    }
}

#[test]
fn both_services_serve_http_and_are_health_checked_by_their_own_binary() {
    let compose = compose();
    for (name, _) in SERVICES {
        let svc = service(&compose, name);
        let env = effective_environment(&compose, name);
        let addr = env
            .get("HTTP_ADDR")
            .cloned()
            .unwrap_or_else(|| panic!("services.{name} sets no HTTP_ADDR"));
        let port = addr.rsplit(':').next().unwrap_or_default().to_string();
        let published = svc
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|p| p.ends_with(&format!(":{port}")));
        assert!(
            published,
            "services.{name} does not publish its HTTP_ADDR port {port}"
        );
        let test: Vec<&str> = svc["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("services.{name} has no healthcheck"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            test,
            ["CMD", &format!("/usr/local/bin/{name}"), "healthcheck"],
            "services.{name}: the image has no shell or curl; the binary checks itself"
        );
    }
}

#[test]
fn compose_values_are_accepted_by_the_config_loader() {
    let compose = compose();
    let producer = RawConfig::load(effective_environment(&compose, "producer"))
        .expect("producer environment loads");
    if let Err(e) = ProducerSettings::from_raw(&producer) {
        panic!("services.producer.environment is rejected by the producer: {e}");
    }
    let consumer = RawConfig::load(effective_environment(&compose, "consumer"))
        .expect("consumer environment loads");
    if let Err(e) = ConsumerSettings::from_raw(&consumer) {
        panic!("services.consumer.environment is rejected by the consumer: {e}");
    }
}

#[test]
fn interpolation_follows_compose() {
    assert_eq!(interpolate("${A:-x}", "t"), "x");
    assert_eq!(interpolate("${A-x}", "t"), "x");
    assert_eq!(interpolate("a${A}b", "t"), "ab");
    assert_eq!(interpolate("$$A $A.", "t"), "$A .");
    assert_eq!(interpolate("${PRODUCER_COUNT:-}", "t"), "");
    assert_eq!(
        interpolate("http://localstack:4566", "t"),
        "http://localstack:4566"
    );
}

#[test]
fn localstack_runs_what_the_stack_needs_and_reports_its_health() {
    let compose = compose();
    let env = effective_environment(&compose, LOCALSTACK);
    let services: Vec<String> = env
        .get("SERVICES")
        .map(|v| v.split(',').map(|s| s.trim().to_lowercase()).collect())
        .unwrap_or_default();
    // Kinesis for everyone, DynamoDB for the leased consumer's lease table (compose's default
    // CONSUMER_MODE). An empty SERVICES would start everything LocalStack has.
    for needed in ["kinesis", "dynamodb"] {
        assert!(
            services.iter().any(|s| s == needed),
            "services.{LOCALSTACK}.environment.SERVICES must include {needed} (it is {services:?})"
        );
    }
    let test = service(&compose, LOCALSTACK)
        .get("healthcheck")
        .and_then(|h| h.get("test"))
        .unwrap_or_else(|| panic!("services.{LOCALSTACK}.healthcheck.test is missing"));
    let words: Vec<String> = match test {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| scalar(i, "healthcheck.test item"))
            .collect(),
        other => vec![scalar(other, "healthcheck.test").unwrap_or_default()],
    };
    assert!(
        words.first().is_some_and(|w| w != "NONE")
            && words.iter().any(|w| w.contains("/_localstack/health")),
        "services.{LOCALSTACK}.healthcheck.test must query /_localstack/health: {words:?}"
    );
    let condition = service(&compose, INIT)
        .get("depends_on")
        .and_then(|d| d.get(LOCALSTACK))
        .and_then(|d| d.get("condition"))
        .and_then(Value::as_str);
    assert_eq!(
        condition,
        Some("service_healthy"),
        "services.{INIT}.depends_on.{LOCALSTACK}.condition must be service_healthy"
    );
}

/// The host address of a `ports:` entry, `None` when it binds every interface.
fn published_host_ip(entry: &Value) -> Option<String> {
    if let Some(ip) = entry.get("host_ip") {
        return scalar(ip, "ports[].host_ip").map(|ip| interpolate(&ip, "ports[].host_ip"));
    }
    if entry.is_mapping() {
        return None;
    }
    let short = interpolate(&scalar(entry, "ports[]").unwrap_or_default(), "ports[]");
    let short = short.split('/').next().unwrap_or_default();
    if let Some(rest) = short.strip_prefix('[') {
        return rest.split_once(']').map(|(ip, _)| ip.to_string());
    }
    let parts: Vec<&str> = short.split(':').collect();
    (parts.len() == 3).then(|| parts[0].to_string())
}

#[test]
fn localstack_is_published_on_loopback_only() {
    let compose = compose();
    let ports = service(&compose, LOCALSTACK)
        .get("ports")
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("services.{LOCALSTACK}.ports is missing"));
    assert!(!ports.is_empty(), "services.{LOCALSTACK}.ports is empty");
    for entry in ports {
        let ip = published_host_ip(entry);
        assert!(
            matches!(ip.as_deref(), Some("127.0.0.1" | "::1" | "localhost")),
            "services.{LOCALSTACK}.ports entry {entry:?} is published on {}: LocalStack has no \
             authentication, bind it to 127.0.0.1 by default",
            ip.unwrap_or_else(|| "every interface".into())
        );
    }
    assert_eq!(
        published_host_ip(&Value::String("${B:-127.0.0.1}:${P:-4566}:4566".into())).as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(published_host_ip(&Value::String("4566:4566".into())), None);
    assert_eq!(
        published_host_ip(&Value::String("[::1]:4566:4566/tcp".into())).as_deref(),
        Some("::1")
    );
}

#[test]
fn the_init_deadline_is_a_host_variable_that_fits_a_first_start() {
    let compose = compose();
    let written = environment(&compose, INIT)
        .remove("INIT_TIMEOUT_SECONDS")
        .flatten()
        .unwrap_or_else(|| panic!("services.{INIT}.environment must set INIT_TIMEOUT_SECONDS"));
    assert!(
        written.contains("${INIT_TIMEOUT_SECONDS"),
        "INIT_TIMEOUT_SECONDS must be overridable from the host (`${{INIT_TIMEOUT_SECONDS:-...}}`), \
         not {written:?}"
    );
    let seconds: u64 = interpolate(&written, "INIT_TIMEOUT_SECONDS")
        .parse()
        .unwrap_or_else(|_| panic!("INIT_TIMEOUT_SECONDS {written:?} is not a whole number"));
    // A first start downloads LocalStack's Kinesis engine before the first call is answered.
    assert!(
        seconds >= 300,
        "INIT_TIMEOUT_SECONDS defaults to {seconds}s, too short for a first start on a slow line"
    );
}

/// Files git tracks, relative to the repository root.
fn tracked_files() -> Vec<String> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo_root())
        .output()
        .expect("run `git ls-files` (this test needs git and a git checkout)");
    assert!(
        out.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 file names")
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn scripts_and_container_files_are_checked_out_with_lf_everywhere() {
    let root = repo_root();
    let must_be_lf: Vec<String> = tracked_files()
        .into_iter()
        .filter(|path| {
            let name = path.rsplit('/').next().unwrap_or(path);
            let script = std::fs::read(root.join(path))
                .map(|bytes| bytes.starts_with(b"#!"))
                .unwrap_or(false);
            // Run by bash or another interpreter (a CR ends up in every line it reads), or read
            // inside a Linux container.
            script
                || name.ends_with(".sh")
                || path.starts_with("localstack-init/")
                || ["Dockerfile", ".dockerignore", "docker-compose.yml"].contains(&name)
        })
        .collect();
    assert!(
        must_be_lf
            .iter()
            .any(|p| p == "localstack-init/create-stream.sh"),
        "the init script was not found among {must_be_lf:?}"
    );
    let out = std::process::Command::new("git")
        .args(["check-attr", "eol", "--"])
        .args(&must_be_lf)
        .current_dir(&root)
        .output()
        .expect("run `git check-attr`");
    assert!(out.status.success(), "git check-attr failed");
    let report = String::from_utf8_lossy(&out.stdout);
    let not_lf: Vec<&str> = report
        .lines()
        .filter(|line| !line.ends_with(": eol: lf"))
        .collect();
    assert!(
        not_lf.is_empty(),
        "these files would be checked out with the platform's line endings (CRLF with Git for \
         Windows' defaults); give them `eol=lf` in .gitattributes:\n{}",
        not_lf.join("\n")
    );
    let with_cr: Vec<&String> = must_be_lf
        .iter()
        .filter(|p| std::fs::read(root.join(p)).is_ok_and(|b| b.contains(&b'\r')))
        .collect();
    assert!(with_cr.is_empty(), "CR characters in {with_cr:?}");
}
