//! The Java KCL 3.x's worker metrics and lease throughput, published by real consumer binaries
//! (`CONSUMER_MODE=leased`) into the lease-table emulator: each worker's worker-metrics item in
//! the layout the application uses, judged by this project's model of the KCL's rules
//! (`kinesis_consumer::lease::worker_metrics`; `tests/interop.rs` has the KCL's own classes judge it),
//! `throughputKBps` written with the renewals of the leases whose shards deliver records, and
//! both shown on `/status` and the status page for every worker and every lease of the
//! application. And the rest of the KCL 3.x coordination state a worker reads: the leader's
//! deletion of stale items, the table-migration record, and the `Migration3.0` record that
//! says which algorithms the fleet runs.
//!
//! Short timings: failover 3 s, a report every 2 s.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use kinesis_consumer::lease::worker_metrics::{MetricsLayout, WorkerMetrics, CPU, EXPIRY};
use serde_json::Value;
use support::*;
use testkit::{http_get, metric_value, Kind, ServiceProcess};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const INTERVAL_MS: &str = "2000";

/// Runs `$body` (a block giving a bool, free to update the test's variables) every 200 ms until
/// it holds or `$limit` passes; gives whether it held.
macro_rules! poll_until {
    ($limit:expr, $body:block) => {{
        let deadline = Instant::now() + $limit;
        loop {
            if $body {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }};
}

async fn setup(prefix: &str, shards: i32) -> Setup {
    Setup::new(prefix, shards, testkit::shared(Kind::KinesisMock)).await
}

/// The worker-metrics items in `table`, read as `layout`.
async fn metrics_items(setup: &Setup, table: &str, layout: MetricsLayout) -> Vec<WorkerMetrics> {
    let Ok(out) = setup.dynamo.scan().table_name(table).send().await else {
        return Vec::new();
    };
    out.items()
        .iter()
        .filter(|i| {
            layout == MetricsLayout::LegacyTable
                || kinesis_consumer::lease::worker_metrics::is_worker_metrics_item(i)
        })
        .map(|i| WorkerMetrics::from_item(i, layout).expect("a readable item"))
        .collect()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A KCL 3.0-3.4 application's tables beside the lease table: `<app>-CoordinatorState` and
/// `<app>-WorkerMetricStats`, created empty; their names.
async fn kcl_3_4_tables(setup: &Setup) -> (String, String) {
    let coordinator = format!("{}-CoordinatorState", setup.app);
    let legacy = format!("{}-WorkerMetricStats", setup.app);
    testkit::create_hash_key_table(&setup.dynamo, &coordinator, "key").await;
    testkit::create_hash_key_table(&setup.dynamo, &legacy, "wid").await;
    (coordinator, legacy)
}

/// Puts the `TableMigration3.5` record with status `tm` into `coordinator`, as a Java worker
/// writes it.
async fn set_table_migration(setup: &Setup, coordinator: &str, tm: &str) {
    setup
        .dynamo
        .put_item()
        .table_name(coordinator)
        .item("key", AttributeValue::S("TableMigration3.5".into()))
        .item("tm", AttributeValue::S(tm.into()))
        .item("mb", AttributeValue::S("java-leader".into()))
        .item("mts", AttributeValue::N("1796000000000".into()))
        .send()
        .await
        .expect("PutItem");
}

fn status(addr: &str) -> Value {
    let (_, body) = http_get(addr, "/status").expect("status answers");
    serde_json::from_str(&body).expect("status JSON")
}

/// Two workers of a new application: each publishes a valid, fresh item into the lease table,
/// with the CPU this machine reads, rewritten every interval; the leases of the shards that
/// deliver records get a `throughputKBps` above 0; one worker's `/status` shows both workers'
/// items and every lease's throughput, and its `/metrics` the CPU it published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_publish_their_metrics_and_lease_throughput_and_status_shows_them_all() {
    let _serial = SERIAL.lock().await;
    let setup = setup("wm", 2).await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let extra = [("CONSUMER_WORKER_METRICS_INTERVAL_MS", INTERVAL_MS)];
    let mut a = setup.worker_with("worker-a", &[extra[0], ("HTTP_ADDR", addr.as_str())]);
    let mut b = setup.worker_with("worker-b", &extra);
    let mut producer = setup.producer(3000, 20);

    // Both items valid and fresh, each rewritten at least once since first seen.
    let mut first: HashMap<String, i64> = HashMap::new();
    let mut items;
    let published = poll_until!(Duration::from_secs(60), {
        items = metrics_items(&setup, &setup.app, MetricsLayout::LeaseTable).await;
        let now = now_ms();
        let mut rewritten = 0;
        for w in &items {
            let ok = w.is_valid() && !w.is_expired(now, EXPIRY) && !w.is_any_metric_failing();
            let lut = w.last_update.unwrap_or_default();
            if !ok {
                continue;
            }
            match first.get(&w.worker_id) {
                None => {
                    first.insert(w.worker_id.clone(), lut);
                }
                Some(f) if lut > *f => rewritten += 1,
                Some(_) => {}
            }
        }
        rewritten == 2
    });
    assert!(published, "{items:?}\n{}", dump_all(&[&a, &b]));
    for w in &items {
        assert!(!w.is_default(), "{w:?}");
        let stats = &w.metric_stats.as_ref().unwrap()[CPU];
        assert!(!stats.is_empty() && stats.len() <= 10, "{w:?}");
        assert!(stats.iter().all(|v| (0.0..=100.0).contains(v)), "{w:?}");
        assert_eq!(w.operating_range.as_ref().unwrap()[CPU], vec![100]);
        assert_eq!(w.support_code, Some(1));
    }
    let started = a.events("publishing worker metrics");
    assert_eq!(started.len(), 1, "{}", a.dump());
    assert_eq!(started[0]["migration"], "TABLE_MIGRATION_STATUS_COMPLETE");

    // Throughput on the leases whose shards deliver.
    let mut leases: Vec<HashMap<String, AttributeValue>>;
    let measured = poll_until!(Duration::from_secs(60), {
        leases = setup
            .items()
            .await
            .into_iter()
            .filter(kinesis_consumer::lease::item::is_lease_item)
            .collect();
        leases.len() == 2
            && leases.iter().all(|l| {
                matches!(l.get("throughputKBps"), Some(AttributeValue::N(n)) if n.parse::<f64>().unwrap_or(0.0) > 0.0)
            })
    });
    assert!(measured, "{leases:?}\n{}", dump_all(&[&a, &b]));

    // The status page: every worker's item and every lease's throughput.
    let mut doc;
    let shown = poll_until!(Duration::from_secs(30), {
        doc = status(&addr);
        let workers: Vec<&str> = doc["worker_metrics"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["valid"] == true && r["fresh"] == true)
                    .filter_map(|r| r["worker_id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let throughputs = doc["leases"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["throughput_kbps"].as_f64() > Some(0.0))
                    .count()
            })
            .unwrap_or(0);
        workers == ["worker-a", "worker-b"] && throughputs == 2
    });
    assert!(shown, "{doc:#}");
    let row = &doc["worker_metrics"][0];
    assert_eq!(row["table"], "lease-table");
    assert_eq!(row["default_worker"], false);
    assert!(row["cpu_percent"].as_f64().is_some(), "{row}");
    // The page itself (a real browser) lists both workers' metrics.
    let mut browser = testkit::Browser::start();
    browser
        .goto(&format!("http://{addr}/"))
        .expect("page loads");
    let shown = browser
        .wait_for(
            "#worker-metrics",
            "worker-b",
            false,
            Duration::from_secs(20),
        )
        .expect("the page lists every worker's metrics");
    assert!(
        shown.contains("worker-a") && shown.contains("valid, fresh") && shown.contains("CPU"),
        "{shown}"
    );
    let (_, metrics) = http_get(&addr, "/metrics").expect("metrics answer");
    let series = format!(
        "kinesis_consumer_worker_cpu_percent{{stream=\"{}\"}}",
        setup.stream
    );
    let cpu = metric_value(&metrics, &series).expect("the published CPU");
    assert!((0.0..=100.0).contains(&cpu), "{metrics}");
    let reports = format!(
        "kinesis_consumer_worker_metrics_reports_total{{stream=\"{}\",result=\"ok\"}}",
        setup.stream
    );
    assert!(metric_value(&metrics, &reports) >= Some(2.0), "{metrics}");

    producer.signal("TERM");
    producer.wait_exit(Duration::from_secs(10));
    stop(&mut a);
    stop(&mut b);
}

/// A KCL 3.0-3.4 application (its `-CoordinatorState` table exists, with no table migration
/// record): the item goes to `<app>-WorkerMetricStats`, keyed by `wid`, and not into the lease
/// table. With no CPU source the worker is a default worker (empty `sts` and `opr`), still
/// valid. Once the record says the migration is complete, a worker started then writes into
/// the lease table. Asked to migrate (phase 2) before phase 1 was deployed, a worker refuses to
/// start, as the KCL does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kcl_3_4_application_gets_the_item_in_its_worker_metrics_table_until_migrated() {
    let _serial = SERIAL.lock().await;
    let setup = setup("wm-legacy", 1).await;
    let (coordinator, legacy) = kcl_3_4_tables(&setup).await;

    let extra = [
        ("CONSUMER_WORKER_METRICS_INTERVAL_MS", INTERVAL_MS),
        ("CONSUMER_WORKER_CPU_SOURCE", "none"),
    ];
    let mut old = setup.worker_with("worker-old", &extra);
    let mut items;
    let published = poll_until!(Duration::from_secs(60), {
        items = metrics_items(&setup, &legacy, MetricsLayout::LegacyTable).await;
        items
            .iter()
            .any(|w| w.worker_id == "worker-old" && w.is_valid() && !w.is_expired(now_ms(), EXPIRY))
    });
    assert!(published, "{items:?}\n{}", old.dump());
    let w = items.iter().find(|w| w.worker_id == "worker-old").unwrap();
    assert!(w.is_default(), "{w:?}");
    assert_eq!(w.metric_stats.as_ref().map(|m| m.len()), Some(0));
    assert!(
        metrics_items(&setup, &setup.app, MetricsLayout::LeaseTable)
            .await
            .is_empty(),
        "nothing in the lease table"
    );
    stop(&mut old);

    // Phase 2 asked for, with phase 1 never recorded: refused at start, naming why.
    let mut early = setup.worker_with(
        "worker-early",
        &[
            extra[0],
            extra[1],
            ("CONSUMER_MIGRATE_TO_LEASE_TABLE", "true"),
        ],
    );
    let code = early
        .wait_exit(Duration::from_secs(30))
        .and_then(|s| s.code());
    assert_eq!(code, Some(1), "{}", early.dump());
    assert!(
        early.dump().contains("phase 1 was never deployed"),
        "{}",
        early.dump()
    );

    // Migrated: the record says COMPLETE.
    set_table_migration(&setup, &coordinator, "TABLE_MIGRATION_STATUS_COMPLETE").await;
    let started = Instant::now();
    let mut new = setup.worker_with("worker-new", &extra);
    let moved = poll_until!(Duration::from_secs(60), {
        items = metrics_items(&setup, &setup.app, MetricsLayout::LeaseTable).await;
        items
            .iter()
            .any(|w| w.worker_id == "worker-new" && w.is_valid())
    });
    assert!(moved, "{items:?}\n{}", new.dump());
    assert!(
        !metrics_items(&setup, &legacy, MetricsLayout::LegacyTable)
            .await
            .iter()
            .any(|w| w.worker_id == "worker-new"),
        "not in the legacy table"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    stop(&mut new);
}

/// A leader deletes the worker-metrics items of workers gone for more than a day
/// (`STALE_AFTER`, the KCL's `staleWorkerMetricsEntryCleanupDuration`), in the table each lives
/// in: the lease table (KCL 3.5) and the `-WorkerMetricStats` table (KCL 3.0-3.4). An item
/// gone for an hour only, and the live workers' items, stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_deletes_worker_metrics_items_gone_for_a_day_in_either_layout() {
    let _serial = SERIAL.lock().await;
    for legacy_layout in [false, true] {
        let setup = setup(
            if legacy_layout {
                "wm-stale-34"
            } else {
                "wm-stale"
            },
            1,
        )
        .await;
        let (table, layout) = if legacy_layout {
            let (_, legacy) = kcl_3_4_tables(&setup).await;
            (legacy, MetricsLayout::LegacyTable)
        } else {
            (setup.app.clone(), MetricsLayout::LeaseTable)
        };
        let mut leader = setup.worker_with(
            "leader",
            &[
                ("CONSUMER_WORKER_METRICS_INTERVAL_MS", INTERVAL_MS),
                ("CONSUMER_WORKER_CPU_SOURCE", "none"),
                ("CONSUMER_LEASE_ASSIGNMENT", "leader"),
                ("CONSUMER_LEADER_LEASE_DURATION_MS", "6000"),
                ("CONSUMER_LEADER_HEARTBEAT_MS", "1000"),
            ],
        );
        // The worker's own item first: the table exists and the worker publishes.
        let mut items;
        let published = poll_until!(Duration::from_secs(60), {
            items = metrics_items(&setup, &table, layout).await;
            items.iter().any(|w| w.worker_id == "leader")
        });
        assert!(published, "{items:?}\n{}", leader.dump());
        let now_secs = now_ms() / 1000;
        for (worker, age_secs) in [("gone-a-day", 25 * 3600), ("gone-an-hour", 3600)] {
            let item = WorkerMetrics::report(
                worker,
                now_secs - age_secs,
                Default::default(),
                Default::default(),
            )
            .to_item(layout);
            setup
                .dynamo
                .put_item()
                .table_name(&table)
                .set_item(Some(item))
                .send()
                .await
                .expect("PutItem");
        }
        let deleted = poll_until!(Duration::from_secs(60), {
            items = metrics_items(&setup, &table, layout).await;
            !items.iter().any(|w| w.worker_id == "gone-a-day")
        });
        assert!(deleted, "{items:?}\n{}", leader.dump());
        let events = leader.events("stale worker-metrics item deleted");
        assert_eq!(events.len(), 1, "{}", leader.dump());
        assert_eq!(events[0]["worker_id"], "gone-a-day");
        assert_eq!(events[0]["table"], table.as_str());
        // Two more passes later, the others are still there.
        let passes = leader.events("assignment pass").len();
        let two_more = poll_until!(Duration::from_secs(60), {
            leader.events("assignment pass").len() >= passes + 2
        });
        assert!(two_more, "{}", leader.dump());
        let left: Vec<String> = metrics_items(&setup, &table, layout)
            .await
            .into_iter()
            .map(|w| w.worker_id)
            .collect();
        assert!(
            left.contains(&"gone-an-hour".to_string()) && left.contains(&"leader".to_string()),
            "{left:?}"
        );
        assert_eq!(
            leader.events("stale worker-metrics item deleted").len(),
            1,
            "{}",
            leader.dump()
        );
        stop(&mut leader);
    }
}

/// A table migration status this consumer does not know (a newer KCL's, say) is read the same
/// way for the worker-metrics item and for the leader lock: the worker neither publishes nor
/// takes part in the election, and says why, naming the status; it still reads its shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_table_migration_status_stops_publishing_and_leading_alike() {
    let _serial = SERIAL.lock().await;
    let setup = setup("wm-unknown", 1).await;
    let (coordinator, _) = kcl_3_4_tables(&setup).await;
    set_table_migration(&setup, &coordinator, "TABLE_MIGRATION_STATUS_NEXT").await;
    let mut worker = setup.worker_with(
        "worker-u",
        &[
            ("CONSUMER_WORKER_METRICS_INTERVAL_MS", INTERVAL_MS),
            ("CONSUMER_LEASE_ASSIGNMENT", "leader"),
            ("CONSUMER_LEADER_LEASE_DURATION_MS", "6000"),
            ("CONSUMER_LEADER_HEARTBEAT_MS", "1000"),
        ],
    );
    let names_it = |events: Vec<Value>| {
        events.iter().any(|e| {
            e["error"]
                .as_str()
                .is_some_and(|s| s.contains("TABLE_MIGRATION_STATUS_NEXT"))
        })
    };
    let both = poll_until!(Duration::from_secs(60), {
        names_it(worker.events(
            "cannot find where to publish worker metrics; not publishing them (a Java KCL 3.x \
             leader will give this worker no new leases)",
        )) && names_it(worker.events("leader election round failed"))
    });
    assert!(both, "{}", worker.dump());
    assert!(
        worker.events("leadership acquired").is_empty(),
        "{}",
        worker.dump()
    );
    assert!(worker.events("publishing worker metrics").is_empty());
    stop(&mut worker);
}

/// Leader mode follows the KCL 3.x's migration record (`Migration3.0`, `cv`): while it says the
/// application's Java workers run the KCL 2.x algorithms (upgrading from 2.x, or rolled back),
/// our workers take by lease count and stay out of the lock-based election, as those workers
/// do; when it flips to 3.x they elect a leader and follow it; rolled back, the leader gives
/// the lock up and they take by count again. The leases stay held throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_mode_runs_the_2x_algorithms_while_the_migration_record_says_so() {
    let _serial = SERIAL.lock().await;
    let setup = setup("wm-cv", 4).await;
    // A KCL 3.5 application upgrading from 2.x: the record in the lease table.
    testkit::create_hash_key_table(&setup.dynamo, &setup.app, "leaseKey").await;
    let set_cv = |cv: &'static str| {
        let dynamo = setup.dynamo.clone();
        let table = setup.app.clone();
        async move {
            dynamo
                .put_item()
                .table_name(&table)
                .item("leaseKey", AttributeValue::S("Migration3.0".into()))
                .item(
                    "entityType",
                    AttributeValue::S("CLIENT_VERSION_MIGRATION".into()),
                )
                .item("cv", AttributeValue::S(cv.into()))
                .item("mb", AttributeValue::S("java-worker".into()))
                .item("mts", AttributeValue::N(now_ms().to_string()))
                .send()
                .await
                .expect("PutItem");
        }
    };
    set_cv("CLIENT_VERSION_UPGRADE_FROM_2X").await;
    let vars = [
        ("CONSUMER_WORKER_METRICS_INTERVAL_MS", INTERVAL_MS),
        ("CONSUMER_WORKER_CPU_SOURCE", "none"),
        ("CONSUMER_LEASE_ASSIGNMENT", "leader"),
        ("CONSUMER_LEADER_LEASE_DURATION_MS", "6000"),
        ("CONSUMER_LEADER_HEARTBEAT_MS", "1000"),
    ];
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let mut a = setup.worker_with(
        "worker-a",
        &[&vars[..], &[("HTTP_ADDR", addr.as_str())]].concat(),
    );
    let mut b = setup.worker_with("worker-b", &vars);
    // What `/status` says of how worker-a takes leases.
    let taking = || {
        let doc = status(&addr);
        (doc["taking"].clone(), doc["client_version"].clone())
    };
    let taking_is = |how: &str, cv: &str| taking() == (Value::from(how), Value::from(cv));
    const ON_2X: &str = "the application runs the KCL 2.x algorithms (Migration3.0): taking by lease count, out of the leader election";
    const ON_3X: &str =
        "the application runs the KCL 3.x algorithms (Migration3.0): following the leader";
    let lock_exists = || async {
        setup
            .dynamo
            .get_item()
            .table_name(&setup.app)
            .key("leaseKey", AttributeValue::S("Leader".into()))
            .consistent_read(true)
            .send()
            .await
            .expect("GetItem")
            .item()
            .is_some_and(|i| !i.contains_key("isReleased"))
    };
    let held_by = |owners: &std::collections::BTreeMap<String, Option<String>>, w: &str| {
        owners.values().filter(|o| o.as_deref() == Some(w)).count()
    };

    // Upgrading from 2.x: both take by count, two leases each, and nobody leads.
    let mut owners: std::collections::BTreeMap<String, Option<String>>;
    let even = poll_until!(Duration::from_secs(60), {
        owners = setup.owners().await;
        held_by(&owners, "worker-a") == 2 && held_by(&owners, "worker-b") == 2
    });
    assert!(even, "{owners:?}\n{}", dump_all(&[&a, &b]));
    for w in [&a, &b] {
        assert_eq!(w.events(ON_2X).len(), 1, "{}", w.dump());
        assert_eq!(
            w.events(ON_2X)[0]["client_version"],
            "CLIENT_VERSION_UPGRADE_FROM_2X"
        );
        assert!(w.events("leadership acquired").is_empty(), "{}", w.dump());
    }
    assert!(!lock_exists().await);
    let counts = poll_until!(Duration::from_secs(10), {
        taking_is("count", "CLIENT_VERSION_UPGRADE_FROM_2X")
    });
    assert!(counts, "{:?}", taking());

    // The fleet is ready: the record flips to 3.x; one of ours leads, both follow.
    set_cv("CLIENT_VERSION_3X_WITH_ROLLBACK").await;
    let led = poll_until!(Duration::from_secs(60), {
        [&a, &b].iter().all(|w| w.events(ON_3X).len() == 1)
            && a.events("leadership acquired").len() + b.events("leadership acquired").len() == 1
            && lock_exists().await
    });
    assert!(led, "{}", dump_all(&[&a, &b]));
    let follows = poll_until!(Duration::from_secs(10), {
        taking_is("follow", "CLIENT_VERSION_3X_WITH_ROLLBACK")
    });
    assert!(follows, "{:?}", taking());

    // Rolled back: the leader gives the lock up, and both take by count again.
    set_cv("CLIENT_VERSION_2X").await;
    let back = poll_until!(Duration::from_secs(60), {
        [&a, &b].iter().all(|w| w.events(ON_2X).len() == 2)
            && a.events("leadership released").len() + b.events("leadership released").len() == 1
            && !lock_exists().await
    });
    assert!(back, "{}", dump_all(&[&a, &b]));
    owners = setup.owners().await;
    assert_eq!(
        held_by(&owners, "worker-a") + held_by(&owners, "worker-b"),
        4,
        "{owners:?}"
    );
    stop(&mut a);
    stop(&mut b);
}

/// `CONSUMER_WORKER_CPU_SOURCE=kcl` publishes what a Java KCL 3.x worker would publish in the
/// same place: on EC2 (here AWS's EC2 metadata mock, IMDSv2) the CPU from `/proc/stat`; where
/// no instance metadata service answers (and no ECS or EKS is found, as on this machine) no
/// CPU, a default worker. Each says at start which platform it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kcl_cpu_source_publishes_cpu_where_the_java_kcl_would() {
    let _serial = SERIAL.lock().await;
    let setup = setup("wm-kcl-cpu", 1).await;
    let (_imds, endpoint) = testkit::ec2_metadata_mock();
    let closed = format!("http://127.0.0.1:{}", testkit::free_port());
    let worker = |id: &str, imds: &str| {
        setup.worker_with(
            id,
            &[
                ("CONSUMER_WORKER_METRICS_INTERVAL_MS", INTERVAL_MS),
                ("CONSUMER_WORKER_CPU_SOURCE", "kcl"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds),
            ],
        )
    };
    let mut on_ec2 = worker("on-ec2", &endpoint);
    let mut elsewhere = worker("elsewhere", &closed);
    let mut items: Vec<WorkerMetrics>;
    let published = poll_until!(Duration::from_secs(60), {
        items = metrics_items(&setup, &setup.app, MetricsLayout::LeaseTable).await;
        ["on-ec2", "elsewhere"]
            .iter()
            .all(|id| items.iter().any(|w| w.worker_id == *id && w.is_valid()))
    });
    assert!(published, "{items:?}\n{}", dump_all(&[&on_ec2, &elsewhere]));
    let item = |id: &str| items.iter().find(|w| w.worker_id == id).unwrap();
    assert!(!item("on-ec2").is_default(), "{:?}", item("on-ec2"));
    assert!(item("elsewhere").is_default(), "{:?}", item("elsewhere"));
    const DETECTED: &str =
        "CONSUMER_WORKER_CPU_SOURCE=kcl: the CPU source a Java KCL worker would use here";
    let detected = |w: &ServiceProcess| {
        let e = w.events(DETECTED);
        assert_eq!(e.len(), 1, "{}", w.dump());
        (e[0]["platform"].clone(), e[0]["cpu"].clone())
    };
    assert_eq!(detected(&on_ec2), (Value::from("EC2"), Value::from("proc")));
    assert_eq!(
        detected(&elsewhere),
        (Value::from("none"), Value::from("none"))
    );
    assert_eq!(on_ec2.events("publishing worker metrics")[0]["cpu"], "proc");
    stop(&mut on_ec2);
    stop(&mut elsewhere);
}
