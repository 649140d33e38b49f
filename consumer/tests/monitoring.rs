//! What `monitoring/` ships (the Grafana dashboard and the Prometheus alert rules) against what
//! the services export: every metric the dashboard's queries and the rules' expressions name is
//! one a running leased consumer or producer serves on `/metrics`, the process metrics among
//! them; and the gauge behind the "shard without a holder" alert shows a shard nobody reads.
//! (`monitoring/check.sh` checks and unit-tests the rules with promtool.)

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use testkit::{http_get, metric_value, Kind, ServiceProcess};

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../monitoring")
        .join(file)
}

fn metrics(addr: &str) -> String {
    match http_get(addr, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET /metrics on {addr}: {other:?}"),
    }
}

/// The sample names a `/metrics` text can hold, from its `# TYPE` lines (a counter's samples
/// end in `_total`, a histogram's in `_bucket`, `_sum` and `_count`).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// The metric names a PromQL expression uses: words starting `kinesis_` or `process_`.
fn named_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut rest = expr;
    while let Some(i) = rest.find(|c: char| word(c)) {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        let w = &tail[..end];
        if w.starts_with("kinesis_") || w.starts_with("process_") {
            names.insert(w.to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring("grafana/kinesis.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    let mut stack = vec![&dashboard];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(e)) = map.get("expr") {
                    exprs.push(e.clone());
                }
                if let Some(serde_json::Value::Object(q)) = map.get("query") {
                    if let Some(serde_json::Value::String(e)) = q.get("query") {
                        exprs.push(e.clone());
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    exprs
}

fn rule_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring("prometheus/alerts.yml")).expect("rules");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("rules YAML");
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .map(|r| {
            (
                r["alert"].as_str().expect("alert").to_string(),
                r["expr"].as_str().expect("expr").to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_dashboard_and_the_alert_rules_name_only_metrics_the_services_export() {
    let kinesis = testkit::shared(Kind::KinesisMock);
    let setup = Setup::new("monitoring", 2, kinesis).await;
    let consumer_addr = format!("127.0.0.1:{}", testkit::free_port());
    let producer_addr = format!("127.0.0.1:{}", testkit::free_port());
    let consumer = setup.worker_with("watched", &[("HTTP_ADDR", consumer_addr.as_str())]);
    let producer = ServiceProcess::spawn(
        &producer_bin(),
        &setup.env(&[
            ("PRODUCER_COUNT", "1000000"),
            ("PRODUCER_INTERVAL_MS", "100"),
            ("PRODUCER_MAX_BUFFERED_RECORDS", "5000"),
            ("HTTP_ADDR", producer_addr.as_str()),
        ]),
    );
    // The per-shard series appear once the producer has counted a put on a shard (its
    // counters are brought up to date once a second).
    let flowing = testkit::eventually(Duration::from_secs(60), || {
        consumer.held_leases().len() == 2
            && consumer.events("record received").len() >= 5
            && http_get(&producer_addr, "/metrics")
                .is_some_and(|(_, m)| m.contains("kinesis_producer_shard_records_put_total{"))
    })
    .await;
    assert!(flowing, "{}\n{}", consumer.dump(), producer.dump());

    let consumer_metrics = metrics(&consumer_addr);
    let producer_metrics = metrics(&producer_addr);
    let stream = format!("{{stream=\"{}\"}}", setup.stream);
    // The values behind the alerts, as configured.
    assert_eq!(
        metric_value(
            &consumer_metrics,
            &format!("kinesis_consumer_failover_seconds{stream}")
        ),
        Some(FAILOVER_MS as f64 / 1000.0),
        "{consumer_metrics}"
    );
    assert_eq!(
        metric_value(
            &producer_metrics,
            &format!("kinesis_producer_max_buffered_records{stream}")
        ),
        Some(5000.0),
        "{producer_metrics}"
    );
    // The process metrics, in both.
    for text in [&consumer_metrics, &producer_metrics] {
        let cpu = metric_value(text, "process_cpu_seconds_total");
        assert!(cpu.is_some_and(|v| v > 0.0), "{text}");
        let rss = metric_value(text, "process_resident_memory_bytes");
        assert!(rss.is_some_and(|v| v > 1e6), "{text}");
        assert!(
            metric_value(text, "process_open_fds").is_some_and(|v| v >= 3.0),
            "{text}"
        );
        assert!(
            metric_value(text, "process_start_time_seconds").is_some(),
            "{text}"
        );
    }

    let served: BTreeSet<String> = exported(&consumer_metrics)
        .union(&exported(&producer_metrics))
        .cloned()
        .collect();
    let mut unknown = Vec::new();
    let exprs = dashboard_exprs();
    assert!(
        exprs.len() >= 10,
        "the dashboard has its queries: {exprs:?}"
    );
    for expr in &exprs {
        for name in named_in(expr) {
            if !served.contains(&name) {
                unknown.push(format!("dashboard: {name} in {expr}"));
            }
        }
    }
    let rules = rule_exprs();
    assert_eq!(rules.len(), 5, "{rules:?}");
    for (alert, expr) in &rules {
        for name in named_in(expr) {
            if !served.contains(&name) {
                unknown.push(format!("alert {alert}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics not exported by either service: {unknown:#?}\nexported: {served:#?}"
    );
    drop(producer);
}

/// One worker allowed a single lease on a two-shard stream: the other shard's lease has no
/// holder, and the gauge of the "shard without a holder" alert passes the failover time; once
/// a second worker takes that lease it falls back to 0.
#[tokio::test]
async fn the_unheld_lease_gauge_passes_the_failover_time_while_a_shard_has_no_holder() {
    let kinesis = testkit::shared(Kind::KinesisMock);
    let setup = Setup::new("unheld", 2, kinesis).await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let capped = setup.worker_with(
        "capped",
        &[
            ("HTTP_ADDR", addr.as_str()),
            ("CONSUMER_MAX_LEASES_PER_WORKER", "1"),
        ],
    );
    let gauge = |addr: &str| {
        http_get(addr, "/metrics").and_then(|(_, text)| {
            metric_value(
                &text,
                &format!(
                    "kinesis_consumer_unheld_lease_seconds{{stream=\"{}\"}}",
                    setup.stream
                ),
            )
        })
    };
    let failover = FAILOVER_MS as f64 / 1000.0;
    let alerting = testkit::eventually(Duration::from_secs(60), || {
        capped.held_leases().len() == 1 && gauge(&addr).is_some_and(|v| v > failover)
    })
    .await;
    assert!(alerting, "gauge {:?}\n{}", gauge(&addr), capped.dump());

    let other = setup.worker("other");
    let cleared = testkit::eventually(Duration::from_secs(60), || {
        other.held_leases().len() == 1 && gauge(&addr) == Some(0.0)
    })
    .await;
    assert!(
        cleared,
        "gauge {:?}\n{}\n{}",
        gauge(&addr),
        capped.dump(),
        other.dump()
    );
}
