use super::*;

fn raw(pairs: &[(&str, &str)]) -> RawConfig {
    RawConfig::load(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
}

#[test]
fn defaults_match_the_documented_contract() {
    let p = ProducerSettings::from_raw(&raw(&[])).unwrap();
    assert_eq!(p.shared.stream_name, "demo-stream");
    assert_eq!(p.interval, Duration::from_millis(1000));
    assert_eq!(p.count, None);
    assert_eq!(p.partition_key, None);
    assert_eq!(p.shared.log_format, LogFormat::Text);
    assert!(!p.aggregation);
    assert_eq!(p.aggregation_max_bytes, 51_200);
    let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
    assert_eq!(c.initial_position, InitialPosition::TrimHorizon);
    assert_eq!(c.max_records, 10_000);
}

#[test]
fn environment_values_are_parsed() {
    let p = ProducerSettings::from_raw(&raw(&[
        ("STREAM_NAME", "orders"),
        ("PRODUCER_INTERVAL_MS", "0"),
        ("PRODUCER_COUNT", "25"),
        ("PRODUCER_PARTITION_KEY", "k1"),
        ("LOG_FORMAT", "JSON"),
    ]))
    .unwrap();
    assert_eq!(p.shared.stream_name, "orders");
    assert_eq!(p.interval, Duration::ZERO);
    assert_eq!(p.count, Some(25));
    assert_eq!(p.partition_key.as_deref(), Some("k1"));
    assert_eq!(p.shared.log_format, LogFormat::Json);
}

#[test]
fn empty_value_means_unset() {
    let p = ProducerSettings::from_raw(&raw(&[("PRODUCER_COUNT", "")])).unwrap();
    assert_eq!(p.count, None);
}

#[test]
fn bad_number_names_variable_value_and_allowed_values() {
    let err = ProducerSettings::from_raw(&raw(&[("PRODUCER_INTERVAL_MS", "soon")])).unwrap_err();
    let line = err.to_string();
    assert_eq!(err.var(), "PRODUCER_INTERVAL_MS");
    assert!(line.contains("\"soon\""), "{line}");
    assert!(line.contains("milliseconds"), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn out_of_range_and_zero_count_are_rejected() {
    let err = ProducerSettings::from_raw(&raw(&[("PRODUCER_COUNT", "0")])).unwrap_err();
    assert_eq!(err.var(), "PRODUCER_COUNT");
    let err = ConsumerSettings::from_raw(&raw(&[("CONSUMER_MAX_RECORDS", "10001")])).unwrap_err();
    assert_eq!(err.var(), "CONSUMER_MAX_RECORDS");
    let err = ConsumerSettings::from_raw(&raw(&[("CONSUMER_POLL_INTERVAL_MS", "50")])).unwrap_err();
    assert_eq!(err.var(), "CONSUMER_POLL_INTERVAL_MS");
}

#[test]
fn bad_stream_name_and_log_format_are_rejected() {
    let err = ConsumerSettings::from_raw(&raw(&[("STREAM_NAME", "a b")])).unwrap_err();
    assert_eq!(err.var(), "STREAM_NAME");
    let err = ConsumerSettings::from_raw(&raw(&[("LOG_FORMAT", "xml")])).unwrap_err();
    assert_eq!(err.var(), "LOG_FORMAT");
}

#[test]
fn initial_positions() {
    let c = ConsumerSettings::from_raw(&raw(&[("CONSUMER_INITIAL_POSITION", "latest")])).unwrap();
    assert_eq!(c.initial_position, InitialPosition::Latest);
    let c = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_INITIAL_POSITION", "AT_TIMESTAMP"),
        ("CONSUMER_START_TIMESTAMP", "2026-01-31T12:00:00Z"),
    ]))
    .unwrap();
    assert!(matches!(
        c.initial_position,
        InitialPosition::AtTimestamp(_)
    ));
    let err = ConsumerSettings::from_raw(&raw(&[("CONSUMER_INITIAL_POSITION", "AT_TIMESTAMP")]))
        .unwrap_err();
    assert_eq!(err.var(), "CONSUMER_START_TIMESTAMP");
    let err =
        ConsumerSettings::from_raw(&raw(&[("CONSUMER_INITIAL_POSITION", "START")])).unwrap_err();
    assert_eq!(err.var(), "CONSUMER_INITIAL_POSITION");
    let err = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_INITIAL_POSITION", "AT_TIMESTAMP"),
        ("CONSUMER_START_TIMESTAMP", "yesterday"),
    ]))
    .unwrap_err();
    assert_eq!(err.var(), "CONSUMER_START_TIMESTAMP");
}

#[test]
fn lease_settings_defaults_and_values() {
    let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
    assert_eq!(c.mode, ConsumerMode::Polling);
    assert_eq!(c.lease.application_name, "demo-consumer");
    assert_eq!(c.lease.worker_id, None);
    assert_eq!(c.lease.failover, Duration::from_secs(10));
    assert_eq!(c.lease.renew_interval(), Duration::from_millis(3333));
    assert_eq!(c.lease.max_leases_per_worker, None);
    let c = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_MODE", "Leased"),
        ("CONSUMER_APPLICATION_NAME", "orders-app"),
        ("CONSUMER_WORKER_ID", "host-1"),
        ("CONSUMER_FAILOVER_MS", "3000"),
        ("CONSUMER_MAX_LEASES_PER_WORKER", "4"),
    ]))
    .unwrap();
    assert_eq!(c.mode, ConsumerMode::Leased);
    assert_eq!(c.lease.application_name, "orders-app");
    assert_eq!(c.lease.worker_id.as_deref(), Some("host-1"));
    assert_eq!(c.lease.renew_interval(), Duration::from_secs(1));
    assert_eq!(c.lease.max_leases_per_worker, Some(4));
}

#[test]
fn handoff_and_cleanup_settings_defaults_and_values() {
    let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
    assert_eq!(c.lease.handoff_timeout, Duration::from_secs(30));
    assert_eq!(
        c.lease.cleanup,
        LeaseCleanupSettings {
            interval: Duration::from_secs(60),
            completed_interval: Duration::from_secs(300),
            garbage_interval: Duration::from_secs(1800),
        }
    );
    let c = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_HANDOFF_TIMEOUT_MS", "0"),
        ("CONSUMER_LEASE_CLEANUP_MS", "500"),
        ("CONSUMER_COMPLETED_LEASE_CLEANUP_MS", "1000"),
        ("CONSUMER_GARBAGE_LEASE_CLEANUP_MS", "2000"),
    ]))
    .unwrap();
    assert_eq!(c.lease.handoff_timeout, Duration::ZERO);
    assert_eq!(c.lease.cleanup.interval, Duration::from_millis(500));
    assert_eq!(c.lease.cleanup.completed_interval, Duration::from_secs(1));
    assert_eq!(c.lease.cleanup.garbage_interval, Duration::from_secs(2));
    for (var, value) in [
        ("CONSUMER_HANDOFF_TIMEOUT_MS", "500"),
        ("CONSUMER_HANDOFF_TIMEOUT_MS", "soon"),
        ("CONSUMER_LEASE_CLEANUP_MS", "0"),
        ("CONSUMER_COMPLETED_LEASE_CLEANUP_MS", "-1"),
        ("CONSUMER_GARBAGE_LEASE_CLEANUP_MS", "99999999999"),
    ] {
        let err = ConsumerSettings::from_raw(&raw(&[(var, value)])).unwrap_err();
        assert_eq!(err.var(), var);
        let line = err.to_string();
        assert!(line.contains(value) && !line.contains('\n'), "{line}");
    }
}

#[test]
fn bad_lease_settings_name_their_variable() {
    for (var, value) in [
        ("CONSUMER_MODE", "kcl"),
        ("CONSUMER_APPLICATION_NAME", "ab"),
        ("CONSUMER_APPLICATION_NAME", "a/b/c"),
        ("CONSUMER_WORKER_ID", "two words"),
        ("CONSUMER_FAILOVER_MS", "100"),
        ("CONSUMER_MAX_LEASES_PER_WORKER", "0"),
    ] {
        let err = ConsumerSettings::from_raw(&raw(&[(var, value)])).unwrap_err();
        assert_eq!(err.var(), var);
        let line = err.to_string();
        assert!(line.contains(value) && !line.contains('\n'), "{line}");
    }
}

#[test]
fn retrieval_settings_defaults_and_values() {
    let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
    assert_eq!(c.retrieval, Retrieval::Polling);
    assert_eq!(c.fan_out.consumer_name, "demo-consumer");
    assert_eq!(c.fan_out.renew_interval, Duration::from_millis(290_000));
    assert_eq!(c.fan_out.idle_timeout, Duration::from_secs(35));
    let c = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_RETRIEVAL", "FanOut"),
        ("CONSUMER_APPLICATION_NAME", "orders-app"),
        ("CONSUMER_EFO_RENEW_MS", "3000"),
        ("CONSUMER_EFO_IDLE_MS", "2000"),
    ]))
    .unwrap();
    assert_eq!(c.retrieval, Retrieval::FanOut);
    assert_eq!(
        c.fan_out.consumer_name, "orders-app",
        "the application name"
    );
    assert_eq!(c.fan_out.renew_interval, Duration::from_secs(3));
    assert_eq!(c.fan_out.idle_timeout, Duration::from_secs(2));
    let c = ConsumerSettings::from_raw(&raw(&[("CONSUMER_EFO_NAME", "efo.1")])).unwrap();
    assert_eq!(c.fan_out.consumer_name, "efo.1");
}

#[test]
fn bad_retrieval_settings_name_their_variable() {
    for (var, value) in [
        ("CONSUMER_RETRIEVAL", "push"),
        ("CONSUMER_EFO_NAME", "a/b"),
        ("CONSUMER_EFO_RENEW_MS", "999"),
        ("CONSUMER_EFO_RENEW_MS", "300001"),
        ("CONSUMER_EFO_IDLE_MS", "soon"),
    ] {
        let err = ConsumerSettings::from_raw(&raw(&[(var, value)])).unwrap_err();
        assert_eq!(err.var(), var);
        let line = err.to_string();
        assert!(line.contains(value) && !line.contains('\n'), "{line}");
    }
    // An application name too long to be a consumer name needs CONSUMER_EFO_NAME, with
    // fan-out only.
    let long = "a".repeat(129);
    assert!(ConsumerSettings::from_raw(&raw(&[("CONSUMER_APPLICATION_NAME", &long)])).is_ok());
    let err = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_APPLICATION_NAME", &long),
        ("CONSUMER_RETRIEVAL", "fanout"),
    ]))
    .unwrap_err();
    assert_eq!(err.var(), "CONSUMER_EFO_NAME");
    let c = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_APPLICATION_NAME", &long),
        ("CONSUMER_EFO_NAME", "short"),
    ]))
    .unwrap();
    assert_eq!(c.lease.application_name, long);
}

#[test]
fn file_values_sit_under_the_environment() {
    let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("producer.toml");
    std::fs::write(
        &file,
        "stream_name = \"from-file\"\nPRODUCER_COUNT = 7\nPRODUCER_INTERVAL_MS = 5\n",
    )
    .unwrap();
    let p = ProducerSettings::from_raw(&raw(&[
        ("CONFIG_FILE", file.to_str().unwrap()),
        ("PRODUCER_INTERVAL_MS", "9"),
    ]))
    .unwrap();
    assert_eq!(p.shared.stream_name, "from-file");
    assert_eq!(p.count, Some(7));
    assert_eq!(p.interval, Duration::from_millis(9));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_config_file_is_an_error_naming_config_file() {
    let err = RawConfig::load([("CONFIG_FILE", "/nonexistent/x.toml")]).unwrap_err();
    assert_eq!(err.var(), "CONFIG_FILE");
}

#[test]
fn the_failure_policy_defaults_to_losing_nothing_and_reads_every_variable() {
    let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
    assert_eq!(c.failure, FailurePolicy::default());
    assert_eq!(c.failure.on_failure, OnFailure::Stop);
    assert_eq!(c.failure.retry_attempts, None);
    let c = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_RETRY_ATTEMPTS", "3"),
        ("CONSUMER_RETRY_BACKOFF_MAX_MS", "1000"),
        ("CONSUMER_BISECT_ON_ERROR", "true"),
        ("CONSUMER_MAX_RECORD_AGE_SECONDS", "60"),
        ("CONSUMER_ON_FAILURE", "stream:demo-failures"),
    ]))
    .unwrap();
    assert_eq!(
        c.failure,
        FailurePolicy {
            retry_attempts: Some(3),
            retry_backoff_max: Duration::from_secs(1),
            bisect_on_error: true,
            max_record_age: Some(Duration::from_secs(60)),
            on_failure: OnFailure::Stream("demo-failures".into()),
        }
    );
    let skip = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_MAX_RECORD_AGE_SECONDS", "5"),
        ("CONSUMER_ON_FAILURE", "skip"),
    ]))
    .unwrap();
    assert_eq!(skip.failure.on_failure, OnFailure::Skip);
    for (var, value) in [
        ("CONSUMER_RETRY_ATTEMPTS", "-2"),
        ("CONSUMER_RETRY_ATTEMPTS", "many"),
        ("CONSUMER_RETRY_BACKOFF_MAX_MS", "10"),
        ("CONSUMER_BISECT_ON_ERROR", "yes"),
        ("CONSUMER_MAX_RECORD_AGE_SECONDS", "0"),
        ("CONSUMER_ON_FAILURE", "drop"),
        ("CONSUMER_ON_FAILURE", "stream:"),
        ("CONSUMER_ON_FAILURE", "stream:bad name"),
    ] {
        let err = ConsumerSettings::from_raw(&raw(&[(var, value)])).expect_err(value);
        assert_eq!(err.var(), var, "{value}");
    }
    // Skipping while retrying for ever would never skip: said at start.
    let err = ConsumerSettings::from_raw(&raw(&[("CONSUMER_ON_FAILURE", "skip")])).unwrap_err();
    assert_eq!(err.var(), "CONSUMER_RETRY_ATTEMPTS");
    assert!(
        err.to_string().contains("CONSUMER_ON_FAILURE is skip"),
        "{err}"
    );
}

#[test]
fn every_declared_name_is_unique() {
    let mut names: Vec<_> = SHARED_VARS
        .iter()
        .chain(PRODUCER_VARS)
        .chain(CONSUMER_VARS)
        .map(|v| v.name)
        .chain(STANDARD_VARS.iter().copied())
        .collect();
    let before = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), before);
}

#[test]
fn lease_assignment_defaults_to_count_and_leader_takes_its_lock_timings() {
    let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
    assert_eq!(c.lease.assignment, LeaseAssignment::Count);
    let c = ConsumerSettings::from_raw(&raw(&[("CONSUMER_LEASE_ASSIGNMENT", "leader")])).unwrap();
    assert_eq!(
        c.lease.assignment,
        LeaseAssignment::Leader {
            lease_duration: Duration::from_secs(120),
            heartbeat: Duration::from_secs(30),
        }
    );
    let c = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_LEASE_ASSIGNMENT", "LEADER"),
        ("CONSUMER_LEADER_LEASE_DURATION_MS", "6000"),
        ("CONSUMER_LEADER_HEARTBEAT_MS", "1000"),
    ]))
    .unwrap();
    assert_eq!(
        c.lease.assignment,
        LeaseAssignment::Leader {
            lease_duration: Duration::from_secs(6),
            heartbeat: Duration::from_secs(1),
        }
    );
    for (vars, bad) in [
        (
            vec![("CONSUMER_LEASE_ASSIGNMENT", "load")],
            "CONSUMER_LEASE_ASSIGNMENT",
        ),
        (
            vec![
                ("CONSUMER_LEASE_ASSIGNMENT", "leader"),
                ("CONSUMER_LEADER_LEASE_DURATION_MS", "2000"),
                ("CONSUMER_LEADER_HEARTBEAT_MS", "2000"),
            ],
            "CONSUMER_LEADER_HEARTBEAT_MS",
        ),
        (
            vec![
                ("CONSUMER_LEASE_ASSIGNMENT", "leader"),
                ("CONSUMER_LEADER_LEASE_DURATION_MS", "999"),
            ],
            "CONSUMER_LEADER_LEASE_DURATION_MS",
        ),
    ] {
        let err = ConsumerSettings::from_raw(&raw(&vars)).unwrap_err();
        assert_eq!(err.var(), bad, "{err}");
    }
}

#[test]
fn worker_metrics_settings_defaults_and_values() {
    let c = ConsumerSettings::from_raw(&raw(&[("CONSUMER_APPLICATION_NAME", "orders")])).unwrap();
    assert_eq!(
        c.lease.worker_metrics,
        WorkerMetricsSettings::defaults("orders")
    );
    assert_eq!(
        c.lease.worker_metrics.legacy_table,
        "orders-WorkerMetricStats"
    );
    assert_eq!(
        c.lease.worker_metrics.coordinator_state_table,
        "orders-CoordinatorState"
    );
    let c = ConsumerSettings::from_raw(&raw(&[
        ("CONSUMER_WORKER_METRICS_INTERVAL_MS", "2000"),
        ("CONSUMER_WORKER_CPU_SOURCE", "Cgroup-V1"),
        ("CONSUMER_WORKER_METRICS_TABLE", "wm-table"),
        ("CONSUMER_COORDINATOR_STATE_TABLE", "cs-table"),
        ("CONSUMER_MIGRATE_TO_LEASE_TABLE", "true"),
    ]))
    .unwrap();
    let w = &c.lease.worker_metrics;
    assert_eq!(w.interval, Duration::from_secs(2));
    assert_eq!(w.cpu, CpuSource::CgroupV1);
    assert_eq!(
        (w.legacy_table.as_str(), w.coordinator_state_table.as_str()),
        ("wm-table", "cs-table")
    );
    assert!(w.migrate_to_lease_table);
    for (var, bad) in [
        ("CONSUMER_WORKER_METRICS_INTERVAL_MS", "999"),
        ("CONSUMER_WORKER_CPU_SOURCE", "ecs"),
        ("CONSUMER_WORKER_METRICS_TABLE", "a b"),
        ("CONSUMER_MIGRATE_TO_LEASE_TABLE", "yes"),
    ] {
        let err = ConsumerSettings::from_raw(&raw(&[(var, bad)])).unwrap_err();
        assert_eq!(err.var(), var, "{err}");
    }
}
