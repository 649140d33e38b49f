//! What the producer shows an operator over HTTP besides its metrics: `GET /status` (JSON) and
//! `GET /` (a page that reads `/status` every two seconds; no external assets, so it works
//! offline).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use common::http::Probe;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::ProducerMetrics;

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
    recent_errors: Vec<RecentError>,
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
        }
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
