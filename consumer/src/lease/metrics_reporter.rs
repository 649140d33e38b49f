//! Publishing this worker's worker-metrics item ([`super::worker_metrics`]) as the Java KCL 3.x
//! does, so that a KCL 3.x leader counts the worker as alive and valid and gives it leases.
//!
//! - **Where** ([`find_layout`], once at start, as the KCL's `TableMigrationStateMachineImpl`
//!   does): no `<app>-CoordinatorState` table -> the lease table (KCL 3.5 and later, or an
//!   application coming from 2.x); otherwise its `TableMigration3.5` record decides, with
//!   `CONSUMER_MIGRATE_TO_LEASE_TABLE` as the KCL's `migrateAllEntitiesToLeaseTable`; no record
//!   -> `<app>-WorkerMetricStats` (a 3.0-3.4 application). The KCL never creates the legacy
//!   tables, and neither does this worker.
//! - **What**: the CPU utilisation ([`super::cpu`]) sampled every [`SAMPLE_INTERVAL`]; each
//!   report appends the average of the samples since the previous one (-1 when none could be
//!   read) to the last [`VALUES_KEPT`], with the operating range `C: [100]`; without a CPU
//!   source the worker publishes empty `sts` and `opr` (a "default" worker). Every report
//!   also carries the support code and its heartbeat.
//! - **When**: first [`FIRST_REPORT_AFTER`] after start (two samples in), then every
//!   `CONSUMER_WORKER_METRICS_INTERVAL_MS` (30 s, the KCL's default).
//! - **How**: an unconditional `UpdateItem` setting exactly those attributes (the KCL's
//!   "ignore nulls" update); a failed write is logged and the next report tries again. The item
//!   is not removed when the worker stops: the KCL does not either, and a leader ignores it
//!   once it is older than twice the interval and deletes it after a day.
//!
//! After each report the worker reads every worker's item (both tables while the migration is
//! not complete, as the KCL's leader does) for the status page.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use kinesis_common::aws::{classify, ErrorKind};
use kinesis_common::config::{CpuSource, WorkerMetricsSettings};
use kinesis_common::kinesis::error_text;
use tokio_util::sync::CancellationToken;

use super::cpu::CpuSampler;
use super::item::ENTITY_TYPE;
use super::worker_metrics::{
    effective_migration_status, round_value, MetricsLayout, TableMigrationStatus, WorkerMetrics,
    COORDINATOR_STATE_KEY, CPU, CPU_MAX_UTILIZATION, FAILED_VALUE, LAST_UPDATE, SAMPLE_INTERVAL,
    TABLE_MIGRATION_KEY, TABLE_MIGRATION_STATUS, VALUES_KEPT, WORKER_METRICS_ENTITY_TYPE,
};

/// The first report comes this long after start, so that it carries two samples (the KCL
/// waits two sample intervals).
pub const FIRST_REPORT_AFTER: Duration = Duration::from_millis(2500);
/// Samples kept between two reports at most (the KCL keeps 300: five minutes at one a second).
const MAX_SAMPLES: usize = 300;

/// Where this application's worker-metrics items are written and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub status: TableMigrationStatus,
    /// The table this worker writes its item to, and its layout.
    pub table: String,
    pub layout: MetricsLayout,
    pub lease_table: String,
    pub legacy_table: String,
}

impl Placement {
    /// The tables a reader scans, with their layouts.
    pub fn read_tables(&self) -> Vec<(&str, MetricsLayout)> {
        let mut tables = vec![(self.lease_table.as_str(), MetricsLayout::LeaseTable)];
        if self.status.reads_legacy() {
            tables.push((self.legacy_table.as_str(), MetricsLayout::LegacyTable));
        }
        tables
    }
}

/// What an application's coordinator-state table says of the KCL 3.4 -> 3.5 table migration:
/// whether the table exists, and its `TableMigration3.5` record's status (`None`: no record).
/// One reading for the two that need it ([`find_layout`] and the leader lock's
/// `LockTable::detect`): a status this consumer does not know, or one that is not a string, is
/// an error for both, with [`ErrorKind::Invalid`].
pub async fn read_migration_record(
    client: &Client,
    coordinator: &str,
) -> Result<(bool, Option<TableMigrationStatus>), (ErrorKind, String)> {
    let out = match client
        .get_item()
        .table_name(coordinator)
        .key(
            COORDINATOR_STATE_KEY,
            AttributeValue::S(TABLE_MIGRATION_KEY.into()),
        )
        .consistent_read(true)
        .send()
        .await
    {
        Ok(out) => out,
        Err(err) if classify(&err) == ErrorKind::NotFound => return Ok((false, None)),
        Err(err) => {
            return Err((
                classify(&err),
                format!(
                    "reading the table migration record from {coordinator:?}: {}",
                    error_text(&err)
                ),
            ))
        }
    };
    match out.item().and_then(|i| i.get(TABLE_MIGRATION_STATUS)) {
        None => Ok((true, None)),
        Some(AttributeValue::S(v)) => match TableMigrationStatus::parse(v) {
            Some(status) => Ok((true, Some(status))),
            None => Err((
                ErrorKind::Invalid,
                format!("{coordinator:?}: unknown table migration status {v:?}"),
            )),
        },
        Some(other) => Err((
            ErrorKind::Invalid,
            format!("{coordinator:?}: the table migration status is not a string: {other:?}"),
        )),
    }
}

/// Decides, as the KCL does at start, where this worker writes its item.
pub async fn find_layout(
    client: &Client,
    lease_table: &str,
    settings: &WorkerMetricsSettings,
) -> anyhow::Result<Placement> {
    let (exists, record) = read_migration_record(client, &settings.coordinator_state_table)
        .await
        .map_err(|(_, message)| anyhow::anyhow!(message))?;
    let status = effective_migration_status(exists, record, settings.migrate_to_lease_table)?;
    let layout = status.write_layout();
    Ok(Placement {
        status,
        table: match layout {
            MetricsLayout::LeaseTable => lease_table.to_string(),
            MetricsLayout::LegacyTable => settings.legacy_table.clone(),
        },
        layout,
        lease_table: lease_table.to_string(),
        legacy_table: settings.legacy_table.clone(),
    })
}

/// Samples between two reports, and the averages `sts` keeps (the KCL's
/// `WorkerMetricStatsManager`, for the one metric published).
#[derive(Debug, Default, Clone)]
pub struct CpuStats {
    samples: Vec<f64>,
    kept: VecDeque<f64>,
}

impl CpuStats {
    pub fn sampled(&mut self, value: f64) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.remove(0);
        }
        self.samples.push(value);
    }

    /// A report: the average of the samples since the last one ([`FAILED_VALUE`] when there
    /// were none) joins the values kept; returns them, oldest first.
    pub fn report(&mut self) -> Vec<f64> {
        let value = if self.samples.is_empty() {
            FAILED_VALUE
        } else {
            round_value(self.samples.iter().sum::<f64>() / self.samples.len() as f64)
        };
        self.samples.clear();
        if self.kept.len() == VALUES_KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(value);
        self.kept.iter().copied().collect()
    }
}

/// Writes this worker's item every interval until cancelled.
pub struct Reporter {
    client: Client,
    worker_id: String,
    placement: Placement,
    interval: Duration,
    sampler: Option<CpuSampler>,
}

impl Reporter {
    /// `cpu_root`: `/` outside tests. A CPU source named explicitly that cannot be read is an
    /// error; `auto` that finds none publishes as a default worker.
    pub fn new(
        client: Client,
        worker_id: String,
        placement: Placement,
        settings: &WorkerMetricsSettings,
        cpu_root: &Path,
    ) -> anyhow::Result<Self> {
        let sampler = CpuSampler::new(settings.cpu, cpu_root).map_err(|e| {
            anyhow::anyhow!("CONSUMER_WORKER_CPU_SOURCE: cannot read the CPU utilisation: {e}")
        })?;
        match &sampler {
            Some(s) => {
                tracing::info!(worker_id = %worker_id, table = %placement.table, layout = ?placement.layout, migration = placement.status.as_str(), cpu = s.reader().name(), "publishing worker metrics")
            }
            None if settings.cpu == CpuSource::None => {
                tracing::info!(worker_id = %worker_id, table = %placement.table, layout = ?placement.layout, migration = placement.status.as_str(), "publishing worker metrics without CPU (a default worker, balanced by throughput)")
            }
            None => {
                tracing::warn!(worker_id = %worker_id, table = %placement.table, "no CPU utilisation can be read here: publishing worker metrics as a default worker (balanced by throughput)")
            }
        }
        Ok(Self {
            client,
            worker_id,
            placement,
            interval: settings.interval,
            sampler,
        })
    }

    /// Samples and reports until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut stats = CpuStats::default();
        // `CpuSampler::new` took the first sample: the next one a whole interval later, so
        // that it compares two points a second apart.
        let mut sample_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + SAMPLE_INTERVAL,
            SAMPLE_INTERVAL,
        );
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_report = tokio::time::Instant::now() + FIRST_REPORT_AFTER;
        let mut sample_failure_logged = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sample_tick.tick() => {
                    if let Some(sampler) = &mut self.sampler {
                        match sampler.sample() {
                            Ok(v) => stats.sampled(v),
                            Err(err) if !sample_failure_logged => {
                                sample_failure_logged = true;
                                tracing::warn!(error = %err, "reading the CPU utilisation failed (published as -1 while it fails)");
                            }
                            Err(_) => {}
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_report) => {
                    next_report = tokio::time::Instant::now() + self.interval;
                    let item = self.item(&mut stats);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.publish(&item) => {}
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.read_fleet() => {}
                    }
                }
            }
        }
    }

    fn item(&self, stats: &mut CpuStats) -> WorkerMetrics {
        let now = chrono::Utc::now().timestamp();
        let (sts, opr) = match &self.sampler {
            Some(_) => {
                let values = stats.report();
                if let (Some(o), Some(v)) = (crate::observe::observer(), values.last()) {
                    o.metrics.worker_cpu_percent.set(*v);
                }
                (
                    BTreeMap::from([(CPU.to_string(), values)]),
                    BTreeMap::from([(CPU.to_string(), vec![CPU_MAX_UTILIZATION])]),
                )
            }
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        WorkerMetrics::report(self.worker_id.clone(), now, sts, opr)
    }

    /// One unconditional partial update (every attribute but the key set).
    async fn publish(&self, item: &WorkerMetrics) {
        let attributes = item.attributes();
        let mut names = std::collections::HashMap::new();
        let mut values = std::collections::HashMap::new();
        let mut sets = Vec::new();
        for (i, (name, value)) in attributes.into_iter().enumerate() {
            names.insert(format!("#a{i}"), name);
            values.insert(format!(":v{i}"), value);
            sets.push(format!("#a{i} = :v{i}"));
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.placement.table)
            .set_key(Some(WorkerMetrics::key(
                &self.worker_id,
                self.placement.layout,
            )))
            .update_expression(format!("SET {}", sets.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        let observer = crate::observe::observer();
        match result {
            Ok(_) => {
                if let Some(o) = observer {
                    o.metrics.worker_metrics_reports.get_or_create(&ok()).inc();
                }
            }
            Err(err) => {
                if let Some(o) = observer {
                    o.metrics
                        .worker_metrics_reports
                        .get_or_create(&failed())
                        .inc();
                }
                tracing::warn!(table = %self.placement.table, error = %error_text(&err), "publishing worker metrics failed, retrying at the next report");
            }
        }
    }

    /// Every worker's item, for the status page.
    async fn read_fleet(&self) {
        let Some(observer) = crate::observe::observer() else {
            return;
        };
        match read_all(&self.client, &self.placement.read_tables()).await {
            Ok(all) => observer.worker_metrics_read(all, self.interval),
            Err(err) => {
                tracing::debug!(error = %err, "reading the workers' metrics for the status page failed")
            }
        }
    }
}

fn ok() -> crate::metrics::Outcome {
    crate::metrics::Outcome {
        result: "ok".into(),
    }
}

fn failed() -> crate::metrics::Outcome {
    crate::metrics::Outcome {
        result: "failed".into(),
    }
}

/// Every worker-metrics item in `tables`, with the table's layout, as the KCL's leader reads
/// them (both tables until the migration is complete: [`Placement::read_tables`]). A legacy
/// table that does not exist has none; items that cannot be read are skipped with a warning.
pub async fn read_all(
    client: &Client,
    tables: &[(&str, MetricsLayout)],
) -> anyhow::Result<Vec<(WorkerMetrics, MetricsLayout)>> {
    let mut all = Vec::new();
    for &(table, layout) in tables {
        let mut start: Option<std::collections::HashMap<String, AttributeValue>> = None;
        loop {
            let mut scan = client
                .scan()
                .table_name(table)
                .set_exclusive_start_key(start.take());
            if layout == MetricsLayout::LeaseTable {
                scan = scan
                    .filter_expression("#et = :et")
                    .expression_attribute_names("#et", ENTITY_TYPE)
                    .expression_attribute_values(
                        ":et",
                        AttributeValue::S(WORKER_METRICS_ENTITY_TYPE.into()),
                    );
            }
            let out = match scan.send().await {
                Ok(out) => out,
                Err(err)
                    if layout == MetricsLayout::LegacyTable
                        && classify(&err) == ErrorKind::NotFound =>
                {
                    break
                }
                Err(err) => anyhow::bail!("Scan on {table:?}: {}", error_text(&err)),
            };
            for item in out.items() {
                match WorkerMetrics::from_item(item, layout) {
                    Ok(m) => all.push((m, layout)),
                    Err(err) => {
                        tracing::warn!(table = %table, error = %err, "unreadable worker-metrics item skipped")
                    }
                }
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
    }
    Ok(all)
}

/// Deletes `metrics`, read from `table` in `layout`, unless its worker wrote it again since it
/// was read: the condition is the `lut` read (and, in the lease table, the worker-metrics
/// `entityType`), as the KCL's `WorkerMetricStatsDAO.deleteMetrics` conditions it. `Ok(false)`:
/// the condition failed (the worker came back, or someone else deleted it first).
pub async fn delete_if_unchanged(
    client: &Client,
    table: &str,
    layout: MetricsLayout,
    metrics: &WorkerMetrics,
) -> anyhow::Result<bool> {
    let Some(lut) = metrics.last_update else {
        anyhow::bail!("worker-metrics item of {:?} has no lut", metrics.worker_id);
    };
    let mut condition = "#lut = :lut AND attribute_exists(#key)".to_string();
    let mut delete = client
        .delete_item()
        .table_name(table)
        .set_key(Some(WorkerMetrics::key(&metrics.worker_id, layout)))
        .expression_attribute_names("#lut", LAST_UPDATE)
        .expression_attribute_names("#key", layout.key_attribute())
        .expression_attribute_values(":lut", AttributeValue::N(lut.to_string()));
    if layout == MetricsLayout::LeaseTable {
        condition.push_str(" AND #et = :et");
        delete = delete
            .expression_attribute_names("#et", ENTITY_TYPE)
            .expression_attribute_values(
                ":et",
                AttributeValue::S(WORKER_METRICS_ENTITY_TYPE.into()),
            );
    }
    match delete.condition_expression(condition).send().await {
        Ok(_) => Ok(true),
        Err(err) if classify(&err) == ErrorKind::ConditionFailed => Ok(false),
        Err(err) => anyhow::bail!("DeleteItem on {table:?}: {}", error_text(&err)),
    }
}

/// Starts publishing for `worker_id`; `None` (logged) when where to publish cannot be found
/// out, so that a worker still reads its shards without (a Java leader then gives it no new
/// leases, and the log says why).
pub async fn start(
    client: Client,
    lease_table: &str,
    worker_id: &str,
    settings: &WorkerMetricsSettings,
    cancel: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let placement = match find_layout(&client, lease_table, settings).await {
        Ok(p) => p,
        Err(err) => {
            // A migration state this worker must not run in stops it, as it stops the KCL.
            if err
                .downcast_ref::<super::worker_metrics::MigrationError>()
                .is_some()
            {
                return Err(err);
            }
            tracing::error!(error = %format!("{err:#}"), "cannot find where to publish worker metrics; not publishing them (a Java KCL 3.x leader will give this worker no new leases)");
            return Ok(None);
        }
    };
    let mut settings = settings.clone();
    if settings.cpu == CpuSource::Kcl {
        let (platform, source) = super::platform::detect(Path::new("/")).await;
        tracing::info!(worker_id = %worker_id, platform = platform.name(), cpu = source.name(), "CONSUMER_WORKER_CPU_SOURCE=kcl: the CPU source a Java KCL worker would use here");
        settings.cpu = source;
    }
    let reporter = Reporter::new(
        client,
        worker_id.to_string(),
        placement,
        &settings,
        Path::new("/"),
    )?;
    let handle = tokio::spawn(reporter.run(cancel));
    Ok(Some(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_report_averages_the_samples_since_the_last_and_keeps_ten() {
        let mut stats = CpuStats::default();
        stats.sampled(10.0);
        stats.sampled(20.0);
        assert_eq!(stats.report(), vec![15.0]);
        // Nothing could be read in between: -1.
        assert_eq!(stats.report(), vec![15.0, -1.0]);
        for i in 0..12 {
            stats.sampled(i as f64);
            stats.report();
        }
        let kept = stats.report();
        assert_eq!(kept.len(), VALUES_KEPT);
        assert_eq!(*kept.last().unwrap(), -1.0);
        assert_eq!(kept[kept.len() - 2], 11.0);
        let mut one_third = CpuStats::default();
        one_third.sampled(1.0);
        one_third.sampled(0.0);
        one_third.sampled(0.0);
        assert_eq!(one_third.report(), vec![0.333333]);
    }
}
