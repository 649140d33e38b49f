//! Checks docker-compose.yml against the variables the services actually read
//! (`common::config`), so the compose file cannot drift from the code:
//!
//! - `producer` and `consumer` set only variables they read (their own, shared or standard AWS /
//!   `RUST_LOG` names), and the values there are accepted by the config loader;
//! - the init container creates the stream the services use, with the same region, access key
//!   and endpoint (LocalStack keys streams by account and region);
//! - both services start only after `localstack-init` completed successfully;
//! - `consumer` can be scaled (no `container_name`, no fixed host port).
//!
//! Values are checked as written and after compose-style interpolation with nothing set on the
//! host (`${VAR:-default}` becomes `default`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::config::{
    ConsumerSettings, ProducerSettings, RawConfig, Service, STANDARD_VARS, STREAM_NAME,
};
use serde_yaml::Value;

const INIT: &str = "localstack-init";
const SERVICES: [(&str, Service); 2] = [
    ("producer", Service::Producer),
    ("consumer", Service::Consumer),
];

fn compose_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
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
    assert!(
        consumer.get("ports").is_none(),
        "services.consumer must not publish host ports: scaled copies would collide"
    );
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
