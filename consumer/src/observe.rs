//! What the consumer shows an operator: its metrics ([`crate::metrics`]), readiness, and the live
//! status (`GET /status`, and the page at `GET /` that reads it every two seconds).
//!
//! One [`Observer`] per process, installed by [`crate::run`] before any shard is read. The
//! reader, the record logger, polling mode and the lease coordinator report to it through
//! [`observer`] — a process-wide handle, as metrics facades keep one, so instrumentation deep
//! in a shard reader needs no handle threaded through every constructor. Library users who
//! install none pay one atomic load per report.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use kinesis_common::http::Probe;
use kinesis_common::telemetry::RecentEvents;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::ConsumerMetrics;

/// One lease as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseRow {
    pub shard_id: String,
    pub owner: Option<String>,
    pub checkpoint: String,
    pub counter: i64,
    pub parents: Vec<String>,
    /// Lag and rate, known for the shards this process reads.
    pub millis_behind_latest: Option<i64>,
    pub records_per_second: Option<f64>,
    /// `throughputKBps` as the holder last wrote it (KCL 3.x holders and ours).
    pub throughput_kbps: Option<f64>,
}

/// One worker's published worker-metrics item (Java KCL 3.x workers and ours), as the page
/// shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerMetricsRow {
    pub worker_id: String,
    /// `lease-table` or `legacy-table` (`<app>-WorkerMetricStats`).
    pub table: &'static str,
    pub last_update: Option<String>,
    pub age_seconds: Option<i64>,
    /// Publishes no metric: a KCL leader balances it by throughput.
    pub default_worker: bool,
    /// As a KCL leader judges it: valid, not expired, no metric failing in its last value.
    pub valid: bool,
    pub fresh: bool,
    pub failing: bool,
    /// The leader's view of its CPU: the moving average of `sts.C`.
    pub cpu_percent: Option<f64>,
    /// `sts` and `opr` as written.
    pub stats: BTreeMap<String, Vec<f64>>,
    pub operating_range: BTreeMap<String, Vec<i64>>,
    pub support_code: Option<i64>,
}

/// How long the page's charts reach back, and how often a point is taken: the history is a
/// ring of `HISTORY_POINTS` points, each with at most `HISTORY_SHARDS` shards (the rest count in
/// the totals only), so its memory is bounded whatever the stream.
pub const HISTORY_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const HISTORY_STEP: Duration = Duration::from_secs(5);
const HISTORY_POINTS: usize = (HISTORY_WINDOW.as_secs() / HISTORY_STEP.as_secs()) as usize;
pub const HISTORY_SHARDS: usize = 256;
/// At most this many shards of the last listing are kept for the keyspace picture.
const KEYSPACE_SHARDS: usize = 4096;

/// One point of the charts: what this process read, per shard and in total, at `t`.
#[derive(Debug, Clone, Serialize)]
struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    t: i64,
    /// Records per second over the last 10 s, summed over every shard read.
    total_rps: f64,
    /// The largest lag of any shard read.
    max_lag_ms: Option<i64>,
    /// Per shard (sorted by shard id, at most [`HISTORY_SHARDS`]): records per second, lag.
    shards: BTreeMap<String, ShardPoint>,
}

#[derive(Debug, Clone, Serialize)]
struct ShardPoint {
    rps: Option<f64>,
    lag_ms: Option<i64>,
}

/// A shard of the stream as the last listing showed it: where it sits in the hash key space
/// (as fractions of 2^128), whether it is open, and its parents, for the keyspace picture.
#[derive(Debug, Clone, Serialize)]
struct KeyspaceShard {
    shard_id: String,
    start: f64,
    end: f64,
    open: bool,
    parents: Vec<String>,
}

/// A shard this process reads, with what is known of it.
#[derive(Debug, Clone, Default)]
struct ShardSeen {
    millis_behind_latest: Option<i64>,
    /// (when, records processed so far), the last 11 samples one second apart.
    samples: VecDeque<(Instant, u64)>,
    reading: bool,
}

#[derive(Debug, Default)]
struct Seen {
    /// Every lease of the application, from the last lease-table scan (leased mode).
    leases: Vec<LeaseRow>,
    workers: Vec<String>,
    /// Leader mode: who leads, as this worker last read the lock.
    leader: Option<crate::lease::leader::LeaderStatus>,
    /// Leased mode: how this worker takes leases now.
    taking: Option<crate::lease::leader::TakingStatus>,
    scanned_at: Option<DateTime<Utc>>,
    shards: BTreeMap<String, ShardSeen>,
    /// Shards stopped by the failure policy, with why.
    stopped: BTreeMap<String, StoppedShard>,
    /// The charts' points, oldest first.
    history: VecDeque<HistoryPoint>,
    /// The last shard listing, sorted by shard id.
    keyspace: Vec<KeyspaceShard>,
    /// `consumer multilang`: the child process of each shard.
    children: BTreeMap<String, ChildRow>,
    /// Every worker's worker-metrics item, from the last read (leased mode).
    worker_metrics: Vec<WorkerMetricsRow>,
}

/// A child process of `consumer multilang`, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChildRow {
    pub shard_id: String,
    pub pid: u32,
    /// The action it is busy with (`initialize`, `processRecords`, ...), or `idle`.
    pub state: &'static str,
    pub since: String,
}

/// A shard this worker stopped reading because its records kept failing.
#[derive(Debug, Clone, Serialize)]
pub struct StoppedShard {
    pub shard_id: String,
    pub since: String,
    pub reason: String,
}

/// The process's observer: metrics, probe, status.
pub struct Observer {
    pub metrics: ConsumerMetrics,
    pub probe: Arc<Probe>,
    stream: String,
    mode: &'static str,
    retrieval: &'static str,
    worker_id: Option<String>,
    application: Option<String>,
    started_at: DateTime<Utc>,
    recent: RecentEvents,
    state: Mutex<Seen>,
}

static OBSERVER: OnceLock<Arc<Observer>> = OnceLock::new();

/// The installed observer, if any.
pub fn observer() -> Option<&'static Arc<Observer>> {
    OBSERVER.get()
}

#[derive(Debug, Serialize)]
struct StatusDoc {
    service: &'static str,
    stream: String,
    mode: &'static str,
    /// `polling` (GetRecords) or `fanout` (SubscribeToShard).
    retrieval: &'static str,
    worker_id: Option<String>,
    application: Option<String>,
    started_at: String,
    alive: bool,
    ready: bool,
    not_ready_reason: Option<String>,
    scanned_at: Option<String>,
    workers: Vec<String>,
    /// Leader mode (`CONSUMER_LEASE_ASSIGNMENT=leader`): the KCL 3.x leader as last read from
    /// its lock (worker id, since when, `lease-table` or `coordinator-state`); absent otherwise.
    leader: Option<crate::lease::leader::LeaderStatus>,
    /// Leased mode: how this worker takes leases now (`taking`: `count` or `follow`) and, in
    /// leader mode, the `Migration3.0` record's `client_version` as last read.
    #[serde(flatten)]
    taking: Option<crate::lease::leader::TakingStatus>,
    /// Every worker's published worker-metrics item (leased mode), sorted by worker id.
    worker_metrics: Vec<WorkerMetricsRow>,
    leases: Vec<LeaseRow>,
    /// Shards held but stopped by the failure policy (`CONSUMER_ON_FAILURE=stop`).
    stopped_shards: Vec<StoppedShard>,
    /// `consumer multilang`: one child process per shard held.
    children: Vec<ChildRow>,
    recent_errors: Vec<kinesis_common::telemetry::RecentEvent>,
    /// The charts: one point every [`HISTORY_STEP`] over the last [`HISTORY_WINDOW`].
    history: Vec<HistoryPoint>,
    /// Every shard of the last listing, open and closed, sorted by shard id.
    keyspace: Vec<KeyspaceShard>,
}

impl Observer {
    /// Creates the process's observer and installs it; later calls return the first one.
    // One call, in `crate::run`, passing what the status document shows.
    #[allow(clippy::too_many_arguments)]
    pub fn install(
        metrics: ConsumerMetrics,
        probe: Arc<Probe>,
        stream: &str,
        mode: &'static str,
        retrieval: &'static str,
        worker_id: Option<String>,
        application: Option<String>,
        recent: RecentEvents,
    ) -> Arc<Self> {
        OBSERVER
            .get_or_init(|| {
                metrics.retrieval(mode, retrieval);
                Arc::new(Self {
                    metrics,
                    probe,
                    stream: stream.to_string(),
                    mode,
                    retrieval,
                    worker_id,
                    application,
                    started_at: Utc::now(),
                    recent,
                    state: Mutex::new(Seen::default()),
                })
            })
            .clone()
    }

    /// Every worker's worker-metrics item as just read; `interval` is this worker's report
    /// interval (an item older than twice it is not fresh, as a KCL leader with the same
    /// interval judges it).
    pub fn worker_metrics_read(
        &self,
        items: Vec<(
            crate::lease::worker_metrics::WorkerMetrics,
            crate::lease::worker_metrics::MetricsLayout,
        )>,
        interval: Duration,
    ) {
        use crate::lease::worker_metrics::{MetricsLayout, CPU, LEADER_EMA_ALPHA};
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let mut rows: Vec<WorkerMetricsRow> = items
            .into_iter()
            .map(|(m, layout)| WorkerMetricsRow {
                table: match layout {
                    MetricsLayout::LeaseTable => "lease-table",
                    MetricsLayout::LegacyTable => "legacy-table",
                },
                last_update: m
                    .last_update
                    .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                age_seconds: m.last_update.map(|s| now.timestamp() - s),
                default_worker: m.is_default(),
                valid: m.is_valid(),
                fresh: !m.is_expired(now_ms, interval * 2),
                failing: m.is_any_metric_failing(),
                cpu_percent: m
                    .metric_average(CPU, LEADER_EMA_ALPHA)
                    .map(|v| (v * 10.0).round() / 10.0),
                stats: m.metric_stats.clone().unwrap_or_default(),
                operating_range: m.operating_range.clone().unwrap_or_default(),
                support_code: m.support_code,
                worker_id: m.worker_id,
            })
            .collect();
        rows.sort_by(|a, b| a.worker_id.cmp(&b.worker_id).then(a.table.cmp(b.table)));
        if let Ok(mut s) = self.state.lock() {
            s.worker_metrics = rows;
        }
    }

    /// The lease table as last scanned, and the workers seen alive in it.
    pub fn leases_scanned(&self, leases: Vec<LeaseRow>, workers: Vec<String>) {
        self.metrics.workers.set(workers.len() as i64);
        if let Ok(mut s) = self.state.lock() {
            s.leases = leases;
            s.workers = workers;
            s.scanned_at = Some(Utc::now());
        }
    }

    /// Who leads (leader mode), as the last election round read the lock.
    pub fn leader_seen(&self, leader: Option<crate::lease::leader::LeaderStatus>) {
        if let Ok(mut s) = self.state.lock() {
            s.leader = leader;
        }
    }

    /// How this worker takes leases, as its last election round (or its start) decided.
    pub fn taking_seen(&self, taking: crate::lease::leader::TakingStatus) {
        if let Ok(mut s) = self.state.lock() {
            s.taking = Some(taking);
        }
    }

    /// This process started reading `shard_id`.
    pub fn reading(&self, shard_id: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.shards.entry(shard_id.to_string()).or_default().reading = true;
        }
    }

    /// This process stopped reading `shard_id` (ended, lost, released).
    pub fn stopped_reading(&self, shard_id: &str) {
        self.metrics.forget_shard(shard_id);
        if let Ok(mut s) = self.state.lock() {
            s.shards.remove(shard_id);
        }
    }

    /// The failure policy stopped `shard_id` (its lease is kept).
    pub fn shard_stopped(&self, shard_id: &str, reason: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.stopped.insert(
                shard_id.to_string(),
                StoppedShard {
                    shard_id: shard_id.to_string(),
                    since: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                    reason: reason.to_string(),
                },
            );
            self.metrics.shards_stopped.set(s.stopped.len() as i64);
        }
    }

    /// A stopped shard's task ended (the worker stops, or the lease moved).
    pub fn shard_released(&self, shard_id: &str) {
        if let Ok(mut s) = self.state.lock() {
            if s.stopped.remove(shard_id).is_some() {
                self.metrics.shards_stopped.set(s.stopped.len() as i64);
            }
        }
    }

    /// A shard listing (shard sync, or polling mode's discovery): the keyspace picture.
    pub fn shards_listed(&self, shards: &[aws_sdk_kinesis::types::Shard]) {
        const TWO_128: f64 = 340282366920938463463374607431768211456.0;
        let mut keyspace: Vec<KeyspaceShard> = shards
            .iter()
            .filter_map(|shard| {
                let (start, end) = kinesis_common::kinesis::hash_range(shard)?;
                Some(KeyspaceShard {
                    shard_id: shard.shard_id().to_string(),
                    start: start as f64 / TWO_128,
                    end: (end as f64 + 1.0) / TWO_128,
                    open: kinesis_common::kinesis::is_open(shard),
                    parents: shard
                        .parent_shard_id()
                        .into_iter()
                        .chain(shard.adjacent_parent_shard_id())
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect();
        keyspace.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        // The newest shards matter most: a very old stream keeps its latest generations.
        if keyspace.len() > KEYSPACE_SHARDS {
            keyspace.drain(..keyspace.len() - KEYSPACE_SHARDS);
        }
        if let Ok(mut s) = self.state.lock() {
            s.keyspace = keyspace;
        }
    }

    /// `consumer multilang`: the child process `pid` of `shard_id` is now in `state`.
    pub fn child_state(&self, shard_id: &str, pid: u32, state: &'static str) {
        if let Ok(mut s) = self.state.lock() {
            s.children.insert(
                shard_id.to_string(),
                ChildRow {
                    shard_id: shard_id.to_string(),
                    pid,
                    state,
                    since: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                },
            );
        }
    }

    /// `consumer multilang`: the child process `pid` of `shard_id` is gone.
    pub fn child_gone(&self, shard_id: &str, pid: u32) {
        if let Ok(mut s) = self.state.lock() {
            if s.children.get(shard_id).is_some_and(|c| c.pid == pid) {
                s.children.remove(shard_id);
            }
        }
    }

    pub fn behind(&self, shard_id: &str, millis: i64) {
        self.metrics.behind(shard_id, millis);
        if let Ok(mut s) = self.state.lock() {
            s.shards
                .entry(shard_id.to_string())
                .or_default()
                .millis_behind_latest = Some(millis);
        }
    }

    /// Samples the per-shard record counts once a second until `cancel`, for the rates, and
    /// takes a point of the charts every [`HISTORY_STEP`].
    pub async fn sample(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut next_point = Instant::now() + HISTORY_STEP;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            if let Ok(mut s) = self.state.lock() {
                for (shard_id, seen) in s.shards.iter_mut() {
                    let count = self
                        .metrics
                        .records_processed
                        .get_or_create(&crate::metrics::Shard {
                            shard_id: shard_id.clone(),
                        })
                        .get();
                    if seen.samples.len() == 11 {
                        seen.samples.pop_front();
                    }
                    seen.samples.push_back((now, count));
                }
                if now >= next_point {
                    next_point = now + HISTORY_STEP;
                    let point = history_point(&s.shards);
                    if s.history.len() == HISTORY_POINTS {
                        s.history.pop_front();
                    }
                    s.history.push_back(point);
                }
            }
        }
    }

    fn document(&self) -> StatusDoc {
        let readiness = self.probe.readiness();
        let (
            mut leases,
            workers,
            scanned_at,
            shards,
            stopped,
            history,
            keyspace,
            children,
            worker_metrics,
        ) = match self.state.lock() {
            Ok(s) => (
                s.leases.clone(),
                (s.workers.clone(), s.leader.clone(), s.taking.clone()),
                s.scanned_at,
                s.shards.clone(),
                s.stopped.values().cloned().collect(),
                s.history.iter().cloned().collect(),
                s.keyspace.clone(),
                s.children.values().cloned().collect(),
                s.worker_metrics.clone(),
            ),
            Err(_) => Default::default(),
        };
        // Polling mode has no lease table: show the shards this process reads.
        if self.mode == "polling" {
            leases = shards
                .keys()
                .map(|shard_id| LeaseRow {
                    shard_id: shard_id.clone(),
                    owner: None,
                    checkpoint: "(no checkpoints in polling mode)".to_string(),
                    counter: 0,
                    parents: Vec::new(),
                    millis_behind_latest: None,
                    records_per_second: None,
                    throughput_kbps: None,
                })
                .collect();
        }
        let by_shard: HashMap<&String, &ShardSeen> = shards.iter().collect();
        for row in &mut leases {
            if let Some(seen) = by_shard.get(&row.shard_id) {
                row.millis_behind_latest = seen.millis_behind_latest;
                row.records_per_second = rate(seen);
            }
        }
        StatusDoc {
            service: "consumer",
            stream: self.stream.clone(),
            mode: self.mode,
            retrieval: self.retrieval,
            worker_id: self.worker_id.clone(),
            application: self.application.clone(),
            started_at: self.started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            alive: self.probe.is_alive(),
            ready: readiness.is_ok(),
            not_ready_reason: readiness.err(),
            scanned_at: scanned_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            workers: workers.0,
            leader: workers.1,
            taking: workers.2,
            worker_metrics,
            leases,
            stopped_shards: stopped,
            children,
            recent_errors: self.recent.recent(),
            history,
            keyspace,
        }
    }
}

/// Records per second of a shard over its last 10 s of samples.
fn rate(seen: &ShardSeen) -> Option<f64> {
    match (seen.samples.front(), seen.samples.back()) {
        (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
            Some(((n1 - n0) as f64 / (*t1 - *t0).as_secs_f64() * 10.0).round() / 10.0)
        }
        _ => None,
    }
}

fn history_point(shards: &BTreeMap<String, ShardSeen>) -> HistoryPoint {
    HistoryPoint {
        t: Utc::now().timestamp_millis(),
        total_rps: (shards.values().filter_map(rate).sum::<f64>() * 10.0).round() / 10.0,
        max_lag_ms: shards.values().filter_map(|s| s.millis_behind_latest).max(),
        shards: shards
            .iter()
            .take(HISTORY_SHARDS)
            .map(|(id, seen)| {
                (
                    id.clone(),
                    ShardPoint {
                        rps: rate(seen),
                        lag_ms: seen.millis_behind_latest,
                    },
                )
            })
            .collect(),
    }
}

/// `GET /status` and `GET /`.
pub fn routes(observer: Arc<Observer>) -> Router {
    Router::new()
        .route("/status", get(status_json))
        .route("/", get(page))
        .with_state(observer)
}

async fn status_json(State(observer): State<Arc<Observer>>) -> impl IntoResponse {
    Json(observer.document())
}

async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}
