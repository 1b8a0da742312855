//! The admin HTTP servers (axum): `/metrics` on the metrics address; `/healthz`, `/livez`,
//! `/readyz` on the health address. Both stop when the daemon's token is cancelled.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    health::{self, Health},
    metrics::{encode_text, DatapathCollector, DatapathSnapshot, TEXT_CONTENT_TYPE},
};

/// Reads the data plane for a scrape (runs in a blocking task).
pub type DatapathReader = Arc<dyn Fn() -> DatapathSnapshot + Send + Sync>;

#[derive(Clone)]
struct HealthCtx {
    health: Arc<Health>,
    timeout: Duration,
}

#[derive(Clone)]
struct MetricsCtx {
    registry: Arc<Registry>,
    collector: DatapathCollector,
    read_datapath: DatapathReader,
}

/// `/healthz`, `/livez`, `/readyz`. `timeout`: kube-proxy's health timeout.
pub fn health_router(health: Arc<Health>, timeout: Duration) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(HealthCtx { health, timeout })
}

/// `/metrics`: refreshes the data-path snapshot, then encodes the registry.
pub fn metrics_router(
    registry: Arc<Registry>,
    collector: DatapathCollector,
    read_datapath: DatapathReader,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(MetricsCtx {
            registry,
            collector,
            read_datapath,
        })
}

async fn healthz(State(ctx): State<HealthCtx>) -> Response {
    let (code, body) = health::healthz(&ctx.health.snapshot(), SystemTime::now(), ctx.timeout);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (
        status,
        [(header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        Json(body),
    )
        .into_response()
}

fn verdict(ok: bool) -> Response {
    if ok {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ok\n").into_response()
    }
}

async fn livez(State(ctx): State<HealthCtx>) -> Response {
    verdict(health::livez(&ctx.health.snapshot(), Instant::now()))
}

async fn readyz(State(ctx): State<HealthCtx>) -> Response {
    verdict(health::readyz(&ctx.health.snapshot()))
}

async fn metrics(State(ctx): State<MetricsCtx>) -> Response {
    let read = ctx.read_datapath.clone();
    let snapshot = match tokio::task::spawn_blocking(move || read()).await {
        Ok(snapshot) => snapshot,
        Err(e) => DatapathSnapshot {
            error: Some(format!("reading the data plane: {e}")),
            ..DatapathSnapshot::default()
        },
    };
    if let Some(error) = &snapshot.error {
        warn!(%error, "scrape: could not read the data plane");
    }
    ctx.collector.set(snapshot);
    match encode_text(&ctx.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
    }
}

/// Binds `addr` (before the daemon touches anything else, so a busy port fails early).
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { what, addr, source })
}

/// Serves `router` on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    what: &'static str,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .map_err(|source| HttpError::Serve { what, source })?;
    info!(%addr, what, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(|source| HttpError::Serve { what, source })
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} server: {source}")]
    Serve {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
