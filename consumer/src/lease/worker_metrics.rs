//! The worker-metrics item of the Java KCL 3.x: each worker publishes one, and the KCL 3.x
//! leader gives leases only to workers whose item is valid and fresh, and balances by what it
//! says. The format and the KCL's rules over it only (no I/O): writing it is
//! `super::metrics_reporter`'s job.
//!
//! Read from the KCL 3.5.1 sources (`WorkerMetricStats`, `WorkerMetricStatsReporter`,
//! `WorkerMetricStatsManager`, `WorkerMetricStatsDAO` and its delegates,
//! `MigrationAwareLAMDataManager`, `LeaseManagementConfig`, `TableMigrationStateMachineImpl`):
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `leaseKey` or `wid` | S | the worker id (hash key: `leaseKey` in the lease table, `wid` in `<app>-WorkerMetricStats`) |
//! | `entityType` | S | `WORKER_METRIC_STATS` (the KCL 3.5 writes it in both layouts) |
//! | `lut` | N | last update, seconds since the epoch |
//! | `sts` | M of L of N | metric short name -> its last [`VALUES_KEPT`] averages, one per report; `-1` = no sample could be read in that interval |
//! | `opr` | M of L of N | metric short name -> operating range, whose first value is the maximum utilisation (never 0) |
//! | `properties` | M of S | free key-values (the KCL writes none) |
//! | `sup` | N | support code: the highest "breaking" feature the worker supports ([`SUPPORT_CODE`]) |
//! | `slu` | N | the support code's heartbeat, seconds since the epoch |
//!
//! A worker with empty `sts` and `opr` is a "default" worker: the leader balances it by the
//! throughput of its leases instead of by its load. The KCL itself publishes CPU only where it
//! finds a platform (EC2, ECS, EKS), and is a default worker elsewhere.
//!
//! Where the items live ([`MetricsLayout`]) is decided once at start, as the KCL 3.5 decides it
//! from the `TableMigration3.5` record in the legacy coordinator-state table
//! ([`effective_migration_status`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{ENTITY_TYPE, LEASE_KEY};

/// Hash key of the separate `<app>-WorkerMetricStats` table (KCL 3.0-3.4 layout).
pub const WORKER_ID: &str = "wid";
pub const LAST_UPDATE: &str = "lut";
pub const METRIC_STATS: &str = "sts";
pub const OPERATING_RANGE: &str = "opr";
pub const PROPERTIES: &str = "properties";
pub const SUPPORT_CODE_ATTRIBUTE: &str = "sup";
pub const SUPPORT_CODE_UPDATED: &str = "slu";
/// The `entityType` of a worker-metrics item.
pub const WORKER_METRICS_ENTITY_TYPE: &str = "WORKER_METRIC_STATS";

/// Metric short names (the KCL's `WorkerMetricType`).
pub const CPU: &str = "C";
pub const MEMORY: &str = "M";
pub const NETWORK_IN: &str = "NI";
pub const NETWORK_OUT: &str = "NO";
pub const THROUGHPUT: &str = "T";

/// A value in `sts` meaning "no sample could be read in that interval".
pub const FAILED_VALUE: f64 = -1.0;
/// The support code the KCL 3.5.1 publishes (features: 1 = single-table migration).
pub const SUPPORT_CODE: i64 = 1;
/// Operating range of the KCL's CPU metric: 100 % utilisation at most.
pub const CPU_MAX_UTILIZATION: i64 = 100;

/// How often a worker writes its item (`workerMetricsReporterFreqInMillis`).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(30);
/// How often a worker samples each metric (`inMemoryWorkerMetricsCaptureFrequencyMillis`).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How many report-interval averages `sts` keeps per metric (`noOfPersistedMetricsPerWorkerMetrics`).
pub const VALUES_KEPT: usize = 10;
/// The leader ignores an item not updated for this long (2 report intervals).
pub const EXPIRY: Duration = Duration::from_secs(2 * 30);
/// The leader trusts a support code heartbeated within this (3 report intervals).
pub const SUPPORT_CODE_EXPIRY: Duration = Duration::from_secs(3 * 30);
/// The leader deletes an item not updated for this long (`staleWorkerMetricsEntryCleanupDuration`).
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The weight of the newest value in the leader's average of `sts` (`workerMetricsEMAAlpha`).
pub const LEADER_EMA_ALPHA: f64 = 0.5;
/// Digits after the decimal point the KCL keeps in each `sts` average.
pub const DECIMALS: i32 = 6;

/// Default name of the KCL 3.0-3.4 worker-metrics table.
pub fn legacy_worker_metrics_table(application_name: &str) -> String {
    format!("{application_name}-WorkerMetricStats")
}

/// Default name of the KCL 3.0-3.4 coordinator-state table (leader lock, migration records).
pub fn legacy_coordinator_state_table(application_name: &str) -> String {
    format!("{application_name}-CoordinatorState")
}

/// Which table holds the worker-metrics items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsLayout {
    /// KCL 3.5 and later: in the lease table, keyed by `leaseKey` = worker id, with `entityType`.
    LeaseTable,
    /// KCL 3.0-3.4: in `<app>-WorkerMetricStats`, keyed by `wid`.
    LegacyTable,
}

impl MetricsLayout {
    /// The item's hash-key attribute.
    pub fn key_attribute(self) -> &'static str {
        match self {
            MetricsLayout::LeaseTable => LEASE_KEY,
            MetricsLayout::LegacyTable => WORKER_ID,
        }
    }
}

/// The coordinator-state record of the KCL 3.4 -> 3.5 table migration: key `key` =
/// [`TABLE_MIGRATION_KEY`], attribute [`TABLE_MIGRATION_STATUS`], in the legacy
/// coordinator-state table only.
pub const COORDINATOR_STATE_KEY: &str = "key";
pub const TABLE_MIGRATION_KEY: &str = "TableMigration3.5";
pub const TABLE_MIGRATION_STATUS: &str = "tm";

/// The KCL's `TableMigrationStatus`, as stored in `tm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableMigrationStatus {
    /// Phase 1 deployed (or being deployed): items still written to the legacy tables.
    Init,
    /// Phase 1 baked: as `Init`.
    Deployed,
    /// Phase 2 (`migrateAllEntitiesToLeaseTable`) being deployed: written to the lease table.
    Pending,
    /// Migrated: the lease table only, for reads and writes; no way back.
    Complete,
}

impl TableMigrationStatus {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "TABLE_MIGRATION_STATUS_INIT" => Self::Init,
            "TABLE_MIGRATION_STATUS_DEPLOYED" => Self::Deployed,
            "TABLE_MIGRATION_STATUS_PENDING" => Self::Pending,
            "TABLE_MIGRATION_STATUS_COMPLETE" => Self::Complete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "TABLE_MIGRATION_STATUS_INIT",
            Self::Deployed => "TABLE_MIGRATION_STATUS_DEPLOYED",
            Self::Pending => "TABLE_MIGRATION_STATUS_PENDING",
            Self::Complete => "TABLE_MIGRATION_STATUS_COMPLETE",
        }
    }

    /// Where a worker in this status writes its worker-metrics item.
    pub fn write_layout(self) -> MetricsLayout {
        match self {
            Self::Init | Self::Deployed => MetricsLayout::LegacyTable,
            Self::Pending | Self::Complete => MetricsLayout::LeaseTable,
        }
    }

    /// Whether a reader in this status also reads the legacy tables (every status but
    /// `Complete`: workers of a rolled-back deployment may have written either).
    pub fn reads_legacy(self) -> bool {
        self != Self::Complete
    }
}

/// A migration state this worker must not run in (the KCL refuses to start the same way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "the lease table migration is asked for (migrate all entities to the lease table) but \
         phase 1 was never deployed: there is a legacy coordinator-state table and no {TABLE_MIGRATION_KEY} record in it"
    )]
    Phase1NotDeployed,
    #[error(
        "the lease table migration is asked for (migrate all entities to the lease table) while \
         phase 1 is still in {}; it may start only once the record says DEPLOYED",
        TableMigrationStatus::Init.as_str()
    )]
    Phase1NotBaked,
}

/// A worker's migration status at start, as the KCL 3.5's `TableMigrationStateMachineImpl`
/// decides it: no legacy coordinator-state table -> `Complete` (a new application, or one
/// coming from 2.x); a legacy table without a record -> `Init`; otherwise the record, turned
/// into `Pending` from `Deployed` when the worker is configured to migrate
/// (`migrate_all_to_lease_table`) and back into `Deployed` from `Pending` when it is not.
pub fn effective_migration_status(
    legacy_coordinator_table_exists: bool,
    record: Option<TableMigrationStatus>,
    migrate_all_to_lease_table: bool,
) -> Result<TableMigrationStatus, MigrationError> {
    use TableMigrationStatus::*;
    Ok(match (legacy_coordinator_table_exists, record) {
        (false, None) => Complete,
        (true, None) if migrate_all_to_lease_table => {
            return Err(MigrationError::Phase1NotDeployed)
        }
        (true, None) => Init,
        (_, Some(Complete)) => Complete,
        (_, Some(Init)) if migrate_all_to_lease_table => {
            return Err(MigrationError::Phase1NotBaked);
        }
        (_, Some(Deployed)) if migrate_all_to_lease_table => Pending,
        (_, Some(Pending)) if !migrate_all_to_lease_table => Deployed,
        (_, Some(status)) => status,
    })
}

/// One worker-metrics item. `None` is an absent attribute (the KCL writes with "ignore
/// nulls", so an absent attribute keeps whatever an earlier write left).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerMetrics {
    pub worker_id: String,
    /// `lut`: seconds since the epoch.
    pub last_update: Option<i64>,
    /// `sts`: metric short name -> its last averages, oldest first.
    pub metric_stats: Option<BTreeMap<String, Vec<f64>>>,
    /// `opr`: metric short name -> operating range (first value: maximum utilisation).
    pub operating_range: Option<BTreeMap<String, Vec<i64>>>,
    pub properties: Option<BTreeMap<String, String>>,
    /// `sup`.
    pub support_code: Option<i64>,
    /// `slu`: seconds since the epoch.
    pub support_code_updated: Option<i64>,
}

impl WorkerMetrics {
    /// What a worker reports at `now_secs`: `stats` (empty for a default worker) with the
    /// operating range of each metric, and the support code heartbeat, as the KCL's reporter
    /// does on every report.
    pub fn report(
        worker_id: impl Into<String>,
        now_secs: i64,
        stats: BTreeMap<String, Vec<f64>>,
        operating_range: BTreeMap<String, Vec<i64>>,
    ) -> Self {
        Self {
            worker_id: worker_id.into(),
            last_update: Some(now_secs),
            metric_stats: Some(stats),
            operating_range: Some(operating_range),
            properties: None,
            support_code: Some(SUPPORT_CODE),
            support_code_updated: Some(now_secs),
        }
    }

    /// The item's key in `layout`.
    pub fn key(worker_id: &str, layout: MetricsLayout) -> HashMap<String, AttributeValue> {
        HashMap::from([(
            layout.key_attribute().to_string(),
            AttributeValue::S(worker_id.to_string()),
        )])
    }

    /// Every attribute but the key, `entityType` included: what a partial update sets.
    /// Values that are not finite (DynamoDB refuses them) are written as [`FAILED_VALUE`].
    pub fn attributes(&self) -> HashMap<String, AttributeValue> {
        let mut item = HashMap::new();
        item.insert(
            ENTITY_TYPE.to_string(),
            AttributeValue::S(WORKER_METRICS_ENTITY_TYPE.into()),
        );
        if let Some(lut) = self.last_update {
            item.insert(LAST_UPDATE.into(), AttributeValue::N(lut.to_string()));
        }
        if let Some(stats) = &self.metric_stats {
            let map = stats
                .iter()
                .map(|(name, values)| {
                    let list = values
                        .iter()
                        .map(|v| AttributeValue::N(number(*v)))
                        .collect();
                    (name.clone(), AttributeValue::L(list))
                })
                .collect();
            item.insert(METRIC_STATS.into(), AttributeValue::M(map));
        }
        if let Some(ranges) = &self.operating_range {
            let map = ranges
                .iter()
                .map(|(name, values)| {
                    let list = values
                        .iter()
                        .map(|v| AttributeValue::N(v.to_string()))
                        .collect();
                    (name.clone(), AttributeValue::L(list))
                })
                .collect();
            item.insert(OPERATING_RANGE.into(), AttributeValue::M(map));
        }
        if let Some(properties) = &self.properties {
            let map = properties
                .iter()
                .map(|(k, v)| (k.clone(), AttributeValue::S(v.clone())))
                .collect();
            item.insert(PROPERTIES.into(), AttributeValue::M(map));
        }
        if let Some(code) = self.support_code {
            item.insert(
                SUPPORT_CODE_ATTRIBUTE.into(),
                AttributeValue::N(code.to_string()),
            );
        }
        if let Some(at) = self.support_code_updated {
            item.insert(
                SUPPORT_CODE_UPDATED.into(),
                AttributeValue::N(at.to_string()),
            );
        }
        item
    }

    /// The whole item in `layout`.
    pub fn to_item(&self, layout: MetricsLayout) -> HashMap<String, AttributeValue> {
        let mut item = self.attributes();
        item.extend(Self::key(&self.worker_id, layout));
        item
    }

    /// Reads an item of `layout`. Unknown attributes are ignored, as the KCL ignores them.
    pub fn from_item(
        item: &HashMap<String, AttributeValue>,
        layout: MetricsLayout,
    ) -> Result<Self, WorkerMetricsFormatError> {
        let key_attribute = layout.key_attribute();
        let worker_id = match item.get(key_attribute) {
            Some(AttributeValue::S(id)) => id.clone(),
            _ => {
                return Err(WorkerMetricsFormatError {
                    worker_id: String::new(),
                    attribute: key_attribute,
                });
            }
        };
        let bad = |attribute: &'static str| WorkerMetricsFormatError {
            worker_id: worker_id.clone(),
            attribute,
        };
        let int = |name: &'static str| -> Result<Option<i64>, WorkerMetricsFormatError> {
            match item.get(name) {
                None | Some(AttributeValue::Null(_)) => Ok(None),
                Some(AttributeValue::N(v)) => parse_integer(v).map(Some).ok_or_else(|| bad(name)),
                Some(_) => Err(bad(name)),
            }
        };
        let lists = |name: &'static str| -> Result<Option<BTreeMap<String, Vec<f64>>>, WorkerMetricsFormatError> {
            match item.get(name) {
                None | Some(AttributeValue::Null(_)) => Ok(None),
                Some(AttributeValue::M(map)) => map
                    .iter()
                    .map(|(k, v)| match v {
                        AttributeValue::L(list) => list
                            .iter()
                            .map(|n| match n {
                                AttributeValue::N(n) => n.trim().parse::<f64>().ok(),
                                _ => None,
                            })
                            .collect::<Option<Vec<f64>>>()
                            .map(|values| (k.clone(), values))
                            .ok_or_else(|| bad(name)),
                        _ => Err(bad(name)),
                    })
                    .collect::<Result<BTreeMap<_, _>, _>>()
                    .map(Some),
                Some(_) => Err(bad(name)),
            }
        };
        let operating_range = lists(OPERATING_RANGE)?
            .map(|map| {
                map.into_iter()
                    .map(|(k, values)| {
                        values
                            .into_iter()
                            .map(|v| (v.fract() == 0.0 && v.is_finite()).then_some(v as i64))
                            .collect::<Option<Vec<i64>>>()
                            .map(|values| (k, values))
                            .ok_or_else(|| bad(OPERATING_RANGE))
                    })
                    .collect::<Result<BTreeMap<_, _>, _>>()
            })
            .transpose()?;
        let properties = match item.get(PROPERTIES) {
            None | Some(AttributeValue::Null(_)) => None,
            Some(AttributeValue::M(map)) => Some(
                map.iter()
                    .map(|(k, v)| match v {
                        AttributeValue::S(v) => Ok((k.clone(), v.clone())),
                        _ => Err(bad(PROPERTIES)),
                    })
                    .collect::<Result<BTreeMap<_, _>, _>>()?,
            ),
            Some(_) => return Err(bad(PROPERTIES)),
        };
        Ok(Self {
            last_update: int(LAST_UPDATE)?,
            metric_stats: lists(METRIC_STATS)?,
            operating_range,
            properties,
            support_code: int(SUPPORT_CODE_ATTRIBUTE)?,
            support_code_updated: int(SUPPORT_CODE_UPDATED)?,
            worker_id,
        })
    }

    /// A "default" worker publishes no metric of its own (empty or absent `sts` and `opr`, or a
    /// throughput metric): the leader balances it by its leases' throughput. The KCL's
    /// `isUsingDefaultWorkerMetric`, including its test for the metric named `THROUGHPUT`
    /// (the type's name, not its short name `T`).
    pub fn is_default(&self) -> bool {
        let empty_stats = self.metric_stats.as_ref().is_none_or(BTreeMap::is_empty);
        let empty_range = self.operating_range.as_ref().is_none_or(BTreeMap::is_empty);
        if empty_stats && empty_range {
            return true;
        }
        match &self.metric_stats {
            Some(stats) => stats.contains_key("THROUGHPUT"),
            None => false,
        }
    }

    /// The KCL's `isValidWorkerMetric`: `lut` present, and unless a default worker, every
    /// metric in `sts` has an operating range whose first value is present and not 0.
    pub fn is_valid(&self) -> bool {
        if self.last_update.is_none() {
            return false;
        }
        if self.is_default() {
            return true;
        }
        let (Some(stats), Some(ranges)) = (&self.metric_stats, &self.operating_range) else {
            return false;
        };
        stats.keys().all(|name| ranges.contains_key(name))
            && ranges
                .values()
                .all(|range| range.first().is_some_and(|max| *max != 0))
    }

    /// The KCL's `isAnyWorkerMetricFailing`: a metric whose newest value is [`FAILED_VALUE`].
    /// The leader gives such a worker no leases in that pass.
    pub fn is_any_metric_failing(&self) -> bool {
        if self.is_default() {
            return false;
        }
        self.metric_stats
            .iter()
            .flat_map(BTreeMap::values)
            .any(|values| values.last() == Some(&FAILED_VALUE))
    }

    /// Whether `lut` is older than `max_age` at `now_ms` (milliseconds since the epoch), or
    /// absent. With [`EXPIRY`]: the leader counts the worker as gone; with [`STALE_AFTER`]: it
    /// deletes the item.
    pub fn is_expired(&self, now_ms: i64, max_age: Duration) -> bool {
        older_than(self.last_update, now_ms, max_age)
    }

    /// Whether the support code's heartbeat (`slu`) is older than `max_age`
    /// ([`SUPPORT_CODE_EXPIRY`]) or absent: the code may then be left over from a newer
    /// version that was rolled back.
    pub fn is_support_code_expired(&self, now_ms: i64, max_age: Duration) -> bool {
        older_than(self.support_code_updated, now_ms, max_age)
    }

    /// What the leader counts as a worker's value of metric `name`: the exponential moving
    /// average of its `sts` values with weight `alpha` for the newer ([`LEADER_EMA_ALPHA`]),
    /// skipping failed ones; 0 when there is none. `None` when the worker does not publish it.
    pub fn metric_average(&self, name: &str, alpha: f64) -> Option<f64> {
        let values = self.metric_stats.as_ref()?.get(name)?;
        let mut average: Option<f64> = None;
        for v in values.iter().copied().filter(|v| *v != FAILED_VALUE) {
            average = Some(match average {
                None => v,
                Some(a) => alpha * v + (1.0 - alpha) * a,
            });
        }
        Some(average.unwrap_or(0.0))
    }
}

/// Rounds an average to the [`DECIMALS`] the KCL keeps.
pub fn round_value(v: f64) -> f64 {
    let scale = 10f64.powi(DECIMALS);
    (v * scale).round() / scale
}

fn older_than(epoch_secs: Option<i64>, now_ms: i64, max_age: Duration) -> bool {
    match epoch_secs {
        None => true,
        Some(secs) => {
            let elapsed_ms = now_ms.saturating_sub(secs.saturating_mul(1000));
            elapsed_ms > i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX)
        }
    }
}

fn number(v: f64) -> String {
    if v.is_finite() {
        v.to_string()
    } else {
        FAILED_VALUE.to_string()
    }
}

/// Integers as the KCL writes them (`1764950400`), or with a fraction of zero.
fn parse_integer(v: &str) -> Option<i64> {
    let v = v.trim();
    v.parse::<i64>().ok().or_else(|| {
        let f = v.parse::<f64>().ok()?;
        (f.fract() == 0.0 && f.is_finite() && f.abs() < 9.0e15).then_some(f as i64)
    })
}

/// Whether an item of the lease table is a worker-metrics item.
pub fn is_worker_metrics_item(item: &HashMap<String, AttributeValue>) -> bool {
    matches!(item.get(ENTITY_TYPE), Some(AttributeValue::S(kind)) if kind == WORKER_METRICS_ENTITY_TYPE)
}

/// An item that is not a worker-metrics item this module can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "worker-metrics item {worker_id:?}: attribute {attribute} is missing or has the wrong type"
)]
pub struct WorkerMetricsFormatError {
    pub worker_id: String,
    pub attribute: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000;

    fn cpu_worker() -> WorkerMetrics {
        WorkerMetrics::report(
            "worker-a",
            NOW,
            BTreeMap::from([(CPU.to_string(), vec![12.5, 30.0, -1.0, 41.123457])]),
            BTreeMap::from([(CPU.to_string(), vec![CPU_MAX_UTILIZATION])]),
        )
    }

    fn default_worker() -> WorkerMetrics {
        WorkerMetrics::report("worker-b", NOW, BTreeMap::new(), BTreeMap::new())
    }

    #[test]
    fn an_item_round_trips_in_both_layouts_with_the_kcl_names_and_types() {
        let w = cpu_worker();
        for (layout, key) in [
            (MetricsLayout::LeaseTable, "leaseKey"),
            (MetricsLayout::LegacyTable, "wid"),
        ] {
            let item = w.to_item(layout);
            let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
            names.sort_unstable();
            let mut expected = vec![key, "entityType", "lut", "opr", "slu", "sts", "sup"];
            expected.sort_unstable();
            assert_eq!(names, expected);
            assert_eq!(item[key], AttributeValue::S("worker-a".into()));
            assert_eq!(
                item["entityType"],
                AttributeValue::S("WORKER_METRIC_STATS".into())
            );
            assert_eq!(item["lut"], AttributeValue::N(NOW.to_string()));
            assert_eq!(item["sup"], AttributeValue::N("1".into()));
            let AttributeValue::M(sts) = &item["sts"] else {
                panic!("sts is a map")
            };
            assert_eq!(
                sts["C"],
                AttributeValue::L(vec![
                    AttributeValue::N("12.5".into()),
                    AttributeValue::N("30".into()),
                    AttributeValue::N("-1".into()),
                    AttributeValue::N("41.123457".into()),
                ])
            );
            let AttributeValue::M(opr) = &item["opr"] else {
                panic!("opr is a map")
            };
            assert_eq!(
                opr["C"],
                AttributeValue::L(vec![AttributeValue::N("100".into())])
            );
            assert_eq!(WorkerMetrics::from_item(&item, layout).unwrap(), w);
            assert!(is_worker_metrics_item(&item));
            assert!(!super::super::item::is_lease_item(&item));
        }
        assert!(!w.to_item(MetricsLayout::LeaseTable).contains_key("wid"));
    }

    /// Numbers as the Java SDK's enhanced client writes them (`Double.toString`).
    #[test]
    fn an_item_written_by_the_java_kcl_is_read() {
        let n = |v: &str| AttributeValue::N(v.into());
        let item: HashMap<String, AttributeValue> = HashMap::from([
            ("leaseKey".into(), AttributeValue::S("java-1".into())),
            (
                "entityType".into(),
                AttributeValue::S("WORKER_METRIC_STATS".into()),
            ),
            ("lut".into(), n("1796000000")),
            (
                "sts".into(),
                AttributeValue::M(HashMap::from([(
                    "C".into(),
                    AttributeValue::L(vec![n("1.0E-4"), n("55.0")]),
                )])),
            ),
            (
                "opr".into(),
                AttributeValue::M(HashMap::from([(
                    "C".into(),
                    AttributeValue::L(vec![n("100")]),
                )])),
            ),
            ("sup".into(), n("1")),
            ("slu".into(), n("1796000000")),
            ("somethingNewer".into(), AttributeValue::Bool(true)),
        ]);
        let w = WorkerMetrics::from_item(&item, MetricsLayout::LeaseTable).unwrap();
        assert_eq!(w.worker_id, "java-1");
        assert_eq!(w.metric_stats.as_ref().unwrap()["C"], vec![0.0001, 55.0]);
        assert!(w.is_valid());
        // A KCL default worker: empty maps.
        let mut empty = item.clone();
        empty.insert("sts".into(), AttributeValue::M(HashMap::new()));
        empty.insert("opr".into(), AttributeValue::M(HashMap::new()));
        let w = WorkerMetrics::from_item(&empty, MetricsLayout::LeaseTable).unwrap();
        assert!(w.is_default() && w.is_valid());
    }

    #[test]
    fn a_bad_item_names_the_attribute() {
        let mut item = cpu_worker().to_item(MetricsLayout::LegacyTable);
        item.insert("lut".into(), AttributeValue::S("now".into()));
        let err = WorkerMetrics::from_item(&item, MetricsLayout::LegacyTable).unwrap_err();
        assert_eq!((err.worker_id.as_str(), err.attribute), ("worker-a", "lut"));
        let item = cpu_worker().to_item(MetricsLayout::LegacyTable);
        let err = WorkerMetrics::from_item(&item, MetricsLayout::LeaseTable).unwrap_err();
        assert_eq!(err.attribute, "leaseKey");
        let mut item = cpu_worker().to_item(MetricsLayout::LeaseTable);
        item.insert(
            "opr".into(),
            AttributeValue::M(HashMap::from([(
                "C".into(),
                AttributeValue::L(vec![AttributeValue::N("99.5".into())]),
            )])),
        );
        let err = WorkerMetrics::from_item(&item, MetricsLayout::LeaseTable).unwrap_err();
        assert_eq!(err.attribute, "opr");
    }

    #[test]
    fn not_finite_values_are_written_as_failed() {
        let mut w = cpu_worker();
        w.metric_stats = Some(BTreeMap::from([(CPU.into(), vec![f64::NAN])]));
        let AttributeValue::M(sts) = &w.attributes()["sts"] else {
            panic!()
        };
        assert_eq!(
            sts["C"],
            AttributeValue::L(vec![AttributeValue::N("-1".into())])
        );
    }

    #[test]
    fn validity_follows_the_kcl() {
        assert!(cpu_worker().is_valid());
        assert!(default_worker().is_valid() && default_worker().is_default());
        assert!(!cpu_worker().is_default());

        let mut no_lut = cpu_worker();
        no_lut.last_update = None;
        assert!(!no_lut.is_valid());

        let mut no_range = cpu_worker();
        no_range.operating_range = None;
        assert!(!no_range.is_valid());

        let mut other_range = cpu_worker();
        other_range.operating_range = Some(BTreeMap::from([(MEMORY.into(), vec![100])]));
        assert!(!other_range.is_valid(), "C has no operating range");

        let mut zero = cpu_worker();
        zero.operating_range = Some(BTreeMap::from([(CPU.into(), vec![0])]));
        assert!(!zero.is_valid(), "maximum utilisation 0");

        let mut empty_range = cpu_worker();
        empty_range.operating_range = Some(BTreeMap::from([(CPU.into(), vec![])]));
        assert!(!empty_range.is_valid());

        // Only an operating range, no stats: not default, and valid (no metric lacks a range).
        let mut only_range = default_worker();
        only_range.operating_range = Some(BTreeMap::from([(CPU.into(), vec![100])]));
        assert!(!only_range.is_default() && only_range.is_valid());

        let mut throughput = default_worker();
        throughput.metric_stats = Some(BTreeMap::from([("THROUGHPUT".into(), vec![1.0])]));
        assert!(throughput.is_default() && throughput.is_valid());
    }

    #[test]
    fn a_metric_is_failing_when_its_newest_value_is_minus_one() {
        assert!(!cpu_worker().is_any_metric_failing(), "an older -1 is fine");
        let mut w = cpu_worker();
        w.metric_stats
            .as_mut()
            .unwrap()
            .get_mut(CPU)
            .unwrap()
            .push(FAILED_VALUE);
        assert!(w.is_any_metric_failing());
        assert!(!default_worker().is_any_metric_failing());
    }

    #[test]
    fn expiry_and_staleness_are_judged_by_lut() {
        let w = cpu_worker();
        let at = |secs: i64| NOW * 1000 + secs * 1000;
        assert!(!w.is_expired(at(60), EXPIRY), "exactly 60 s old is fresh");
        assert!(w.is_expired(at(60) + 1, EXPIRY));
        assert!(!w.is_expired(at(3600), STALE_AFTER));
        assert!(w.is_expired(at(86_401), STALE_AFTER));
        assert!(!w.is_support_code_expired(at(90), SUPPORT_CODE_EXPIRY));
        assert!(w.is_support_code_expired(at(91), SUPPORT_CODE_EXPIRY));
        let mut no_lut = w.clone();
        no_lut.last_update = None;
        no_lut.support_code_updated = None;
        assert!(no_lut.is_expired(at(0), EXPIRY));
        assert!(no_lut.is_support_code_expired(at(0), SUPPORT_CODE_EXPIRY));
    }

    #[test]
    fn the_leaders_average_skips_failed_values() {
        let w = cpu_worker();
        // 12.5, then 30 -> 21.25, (-1 skipped), then 41.123457 -> 31.1867285
        let avg = w.metric_average(CPU, LEADER_EMA_ALPHA).unwrap();
        assert!((avg - 31.186_728_5).abs() < 1e-9, "{avg}");
        assert_eq!(w.metric_average(MEMORY, LEADER_EMA_ALPHA), None);
        let mut all_failed = w.clone();
        all_failed.metric_stats = Some(BTreeMap::from([(CPU.into(), vec![-1.0])]));
        assert_eq!(all_failed.metric_average(CPU, LEADER_EMA_ALPHA), Some(0.0));
        assert_eq!(round_value(41.123_456_789), 41.123_457);
    }

    #[test]
    fn the_layout_follows_the_table_migration_record() {
        use TableMigrationStatus::*;
        let s = |exists, record, migrate| effective_migration_status(exists, record, migrate);
        // A new 3.5 application or one from 2.x: no legacy table.
        assert_eq!(s(false, None, false), Ok(Complete));
        assert_eq!(s(false, None, true), Ok(Complete));
        // A 3.0-3.4 application: legacy tables, no record yet.
        assert_eq!(s(true, None, false), Ok(Init));
        assert_eq!(s(true, None, true), Err(MigrationError::Phase1NotDeployed));
        assert_eq!(s(true, Some(Init), false), Ok(Init));
        assert_eq!(
            s(true, Some(Init), true),
            Err(MigrationError::Phase1NotBaked)
        );
        assert_eq!(s(true, Some(Deployed), false), Ok(Deployed));
        assert_eq!(s(true, Some(Deployed), true), Ok(Pending));
        assert_eq!(s(true, Some(Pending), false), Ok(Deployed));
        assert_eq!(s(true, Some(Pending), true), Ok(Pending));
        assert_eq!(s(true, Some(Complete), false), Ok(Complete));
        assert_eq!(Init.write_layout(), MetricsLayout::LegacyTable);
        assert_eq!(Deployed.write_layout(), MetricsLayout::LegacyTable);
        assert_eq!(Pending.write_layout(), MetricsLayout::LeaseTable);
        assert_eq!(Complete.write_layout(), MetricsLayout::LeaseTable);
        assert!(Pending.reads_legacy() && !Complete.reads_legacy());
        for status in [Init, Deployed, Pending, Complete] {
            assert_eq!(TableMigrationStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(TableMigrationStatus::parse("INIT"), None);
        assert_eq!(legacy_worker_metrics_table("app"), "app-WorkerMetricStats");
        assert_eq!(
            legacy_coordinator_state_table("app"),
            "app-CoordinatorState"
        );
    }
}
