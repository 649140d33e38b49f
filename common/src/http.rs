//! The services' HTTP server, on `HTTP_ADDR` when it is set: Prometheus metrics, liveness and
//! readiness for orchestrators, and whatever status routes the service adds.
//!
//! - `GET /metrics`: every metric registered in the service's registry, in the OpenMetrics text
//!   format (which Prometheus scrapes), encoded by `prometheus-client`.
//! - `GET /healthz`: 200 while the service's main loop runs, 503 before and after.
//! - `GET /readyz`: 200 when the service can do its work (the stream is ACTIVE; in leased mode
//!   the lease table answers), else 503 with a one-line reason.
//!
//! The container image has no shell and no curl, so `healthcheck` (a subcommand of both
//! binaries) asks the service's own `/healthz`: see [`healthcheck`].

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// What `/healthz` and `/readyz` answer, set by the service as it goes.
#[derive(Debug)]
pub struct Probe {
    alive: AtomicBool,
    /// `None` when ready, else why not.
    not_ready: Mutex<Option<String>>,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            alive: AtomicBool::new(false),
            not_ready: Mutex::new(Some("starting".to_string())),
        }
    }
}

impl Probe {
    /// The main loop runs (`true`) or has ended (`false`).
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
    }

    /// Whether the main loop runs (`/health`).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Ready to work (`/ready` answers 200).
    pub fn set_ready(&self) {
        if let Ok(mut r) = self.not_ready.lock() {
            *r = None;
        }
    }

    /// Not ready, for this reason (`/ready` answers 503 with it).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.not_ready.lock() {
            *r = Some(reason.into());
        }
    }

    /// `Ok` when ready, else the reason.
    pub fn readiness(&self) -> Result<(), String> {
        match self.not_ready.lock() {
            Ok(r) => r.clone().map_or(Ok(()), Err),
            Err(_) => Err("readiness state unavailable".to_string()),
        }
    }
}

#[derive(Clone)]
struct Shared {
    probe: Arc<Probe>,
    registry: Arc<Registry>,
}

/// `/metrics`, `/healthz` and `/readyz` over the given registry and probe; merge the
/// service's own routes into it.
pub fn router(probe: Arc<Probe>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { probe, registry })
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &shared.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {err}\n"),
        ),
    }
}

async fn healthz(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    if shared.probe.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not running\n")
    }
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, String) {
    match shared.probe.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Binds `addr` and serves `router` until `cancel` fires. Binding happens before this returns,
/// so a taken port is an error at start, not a log line later.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    cancel: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on HTTP_ADDR {addr}"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "HTTP server listening");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "HTTP server failed");
        }
    }))
}

/// Runs the service's `main` future with the HTTP server on `addr` (when set) answering for its
/// whole life, shutdown included: `/healthz` says alive while `main` runs, `/readyz` says
/// "stopped" after it. `sampler` runs beside it (the status page's rate samples) until then.
pub async fn run_with_server<T, M, S, SF>(
    addr: Option<SocketAddr>,
    probe: Arc<Probe>,
    registry: Registry,
    routes: Router,
    sampler: S,
    main: M,
) -> anyhow::Result<T>
where
    M: std::future::Future<Output = anyhow::Result<T>>,
    S: FnOnce(CancellationToken) -> SF,
    SF: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = CancellationToken::new();
    let mut registry = registry;
    registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
    let server = match addr {
        Some(addr) => {
            let app = router(probe.clone(), Arc::new(registry)).merge(routes);
            Some(serve(addr, app, stop.clone()).await?)
        }
        None => None,
    };
    let sampler = tokio::spawn(sampler(stop.clone()));
    probe.set_alive(true);
    let result = main.await;
    probe.set_alive(false);
    probe.set_not_ready("stopped");
    stop.cancel();
    let _ = sampler.await;
    if let Some(server) = server {
        let _ = server.await;
    }
    result
}

/// The `healthcheck` subcommand: asks `GET /healthz` of the service listening on `addr` (a
/// wildcard address means this host) and says whether it answered 200 within 2 seconds.
pub fn healthcheck(addr: SocketAddr) -> Result<(), String> {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&target, timeout)
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot ask {target}: {e}"))?;
    let mut answer = String::new();
    stream
        .take(4096)
        .read_to_string(&mut answer)
        .map_err(|e| format!("no answer from {target}: {e}"))?;
    let status = answer.split_whitespace().nth(1).unwrap_or("none");
    if status == "200" {
        Ok(())
    } else {
        Err(format!("{target}/healthz answered {status}"))
    }
}

/// `main` of the `healthcheck` subcommand: exit 0 when the service on `HTTP_ADDR` is alive, 1
/// when not, 2 when `HTTP_ADDR` is not set (there is nothing to ask).
pub fn healthcheck_main(service: &str, addr: Option<SocketAddr>) -> std::process::ExitCode {
    let Some(addr) = addr else {
        eprintln!("{service} healthcheck: HTTP_ADDR is not set, so there is no server to ask");
        return std::process::ExitCode::from(2);
    };
    match healthcheck(addr) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{service} healthcheck: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
