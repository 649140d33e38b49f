//! What the producer shows an operator over HTTP besides its metrics: `GET /status` (JSON) and
//! `GET /` (a page that reads `/status` every two seconds; no external assets, so it works
//! offline): totals, charts of the last 15 minutes, and each shard's put rate against its
//! write limits with its throttles, retries and busiest partition keys ([`ShardStats`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use kinesis_common::http::Probe;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::ProducerMetrics;
use crate::shard_stats::{ShardRow, SHARD_BYTES_PER_SECOND, SHARD_RECORDS_PER_SECOND};

/// How long the page's charts reach back, and how often a point is taken: the history is a
/// ring of `HISTORY_POINTS` points of a few numbers each, so its memory is fixed.
pub const HISTORY_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const HISTORY_STEP: Duration = Duration::from_secs(5);
const HISTORY_POINTS: usize = (HISTORY_WINDOW.as_secs() / HISTORY_STEP.as_secs()) as usize;

/// One point of the charts: user records per second over the step before `t`.
#[derive(Debug, Clone, Serialize)]
struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    t: i64,
    acknowledged: f64,
    failed: f64,
    retries: f64,
    /// Entries throttled (`ProvisionedThroughputExceededException`) per second.
    throttles: f64,
}

/// Cumulative counts a history point is the difference of.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    acknowledged: u64,
    failed: u64,
    retries: u64,
    throttles: u64,
}

#[derive(Debug, Default)]
struct History {
    points: VecDeque<HistoryPoint>,
    last: Option<(Instant, Totals)>,
}

#[derive(Debug, Serialize)]
struct ShardLimits {
    records_per_second: u64,
    bytes_per_second: u64,
}

/// How many recent errors the page shows.
const RECENT_ERRORS: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub time: String,
    pub id: String,
    pub error: String,
}

/// Shared between the service (which reports errors) and the HTTP handlers.
pub struct ProducerStatus {
    stream: String,
    started_at: DateTime<Utc>,
    metrics: ProducerMetrics,
    probe: Arc<Probe>,
    errors: Mutex<VecDeque<RecentError>>,
    /// Records reported `record not sent`.
    failed: AtomicU64,
    /// (when, user records acknowledged so far), one sample a second for the last 10 s.
    samples: Mutex<VecDeque<(Instant, u64)>>,
    history: Mutex<History>,
}

#[derive(Debug, Serialize)]
struct StatusDoc {
    service: &'static str,
    stream: String,
    started_at: String,
    alive: bool,
    ready: bool,
    not_ready_reason: Option<String>,
    acknowledged: u64,
    kinesis_records: u64,
    failed: u64,
    retries: u64,
    per_second: f64,
    buffered: i64,
    in_flight: i64,
    throttles: u64,
    recent_errors: Vec<RecentError>,
    /// The charts' points, oldest first, one every [`HISTORY_STEP`] over [`HISTORY_WINDOW`].
    history: Vec<HistoryPoint>,
    shard_limits: ShardLimits,
    /// Shards by shard id: the open shards of the producer's last listing and every shard
    /// records went to.
    shards: Vec<ShardRow>,
}

impl ProducerStatus {
    pub fn new(stream: &str, metrics: ProducerMetrics, probe: Arc<Probe>) -> Arc<Self> {
        Arc::new(Self {
            stream: stream.to_string(),
            started_at: Utc::now(),
            metrics,
            probe,
            errors: Mutex::new(VecDeque::new()),
            failed: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::new()),
            history: Mutex::default(),
        })
    }

    /// Counts a record reported `record not sent` and keeps the last few for the page.
    pub fn error(&self, id: &str, error: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() == RECENT_ERRORS {
                errors.pop_front();
            }
            errors.push_back(RecentError {
                time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                id: id.to_string(),
                error: error.to_string(),
            });
        }
    }

    /// Samples the acknowledged count once a second until `cancel`, for the rate.
    pub async fn sample(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Ok(mut samples) = self.samples.lock() {
                if samples.len() == 11 {
                    samples.pop_front();
                }
                samples.push_back((Instant::now(), self.metrics.user_records_put.get()));
            }
            self.metrics.shards.tick();
            self.record_history(Instant::now());
        }
    }

    fn totals(&self) -> Totals {
        Totals {
            acknowledged: self.metrics.user_records_put.get(),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.metrics.retries.get(),
            throttles: self.metrics.shards.throttles(),
        }
    }

    /// Adds a point to the history when [`HISTORY_STEP`] has passed since the last one.
    fn record_history(&self, now: Instant) {
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        let totals = self.totals();
        let Some((then, before)) = history.last else {
            history.last = Some((now, totals));
            return;
        };
        let secs = (now - then).as_secs_f64();
        if secs + 0.1 < HISTORY_STEP.as_secs_f64() {
            return;
        }
        let rate = |a: u64, b: u64| ((a.saturating_sub(b)) as f64 / secs * 10.0).round() / 10.0;
        if history.points.len() == HISTORY_POINTS {
            history.points.pop_front();
        }
        history.points.push_back(HistoryPoint {
            t: Utc::now().timestamp_millis(),
            acknowledged: rate(totals.acknowledged, before.acknowledged),
            failed: rate(totals.failed, before.failed),
            retries: rate(totals.retries, before.retries),
            throttles: rate(totals.throttles, before.throttles),
        });
        history.last = Some((now, totals));
    }

    fn per_second(&self) -> f64 {
        let Ok(samples) = self.samples.lock() else {
            return 0.0;
        };
        match (samples.front(), samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / (*t1 - *t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn document(&self) -> StatusDoc {
        let readiness = self.probe.readiness();
        StatusDoc {
            service: "producer",
            stream: self.stream.clone(),
            started_at: self.started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            alive: self.probe.is_alive(),
            ready: readiness.is_ok(),
            not_ready_reason: readiness.err(),
            acknowledged: self.metrics.user_records_put.get(),
            kinesis_records: self.metrics.kinesis_records_put.get(),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.metrics.retries.get(),
            per_second: (self.per_second() * 10.0).round() / 10.0,
            buffered: self.metrics.buffered_records.get(),
            in_flight: self.metrics.in_flight_calls.get(),
            throttles: self.metrics.shards.throttles(),
            history: self
                .history
                .lock()
                .map(|h| h.points.iter().cloned().collect())
                .unwrap_or_default(),
            shard_limits: ShardLimits {
                records_per_second: SHARD_RECORDS_PER_SECOND,
                bytes_per_second: SHARD_BYTES_PER_SECOND,
            },
            shards: self.metrics.shards.rows(),
            recent_errors: self
                .errors
                .lock()
                .map(|e| e.iter().rev().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// `GET /status` and `GET /`.
pub fn routes(status: Arc<ProducerStatus>) -> Router {
    Router::new()
        .route("/status", get(status_json))
        .route("/", get(page))
        .with_state(status)
}

async fn status_json(State(status): State<Arc<ProducerStatus>>) -> impl IntoResponse {
    Json(status.document())
}

async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}
