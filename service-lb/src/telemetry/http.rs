//! The admin HTTP servers (axum): `/metrics` and `/proxyMode` on the metrics address;
//! `/healthz`, `/livez`, `/readyz` on the health address. Both stop when the daemon's token is cancelled.

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
    metrics::{encode_text, DatapathCollector, PathCounter, TEXT_CONTENT_TYPE},
};

/// Reads the data plane's counters for a scrape (runs in a blocking task). Only the
/// fixed-size counters: map entries are sampled elsewhere (`daemon::datapath`), so a
/// scrape never walks a map.
pub type DatapathReader = Arc<dyn Fn() -> Result<Vec<PathCounter>, String> + Send + Sync>;

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
        .route("/proxyMode", get(proxy_mode))
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
    let (code, body) = health::livez_answer(
        &ctx.health.snapshot(),
        SystemTime::now(),
        Instant::now(),
        ctx.timeout,
    );
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (
        status,
        [(header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        Json(body),
    )
        .into_response()
}

/// What `/proxyMode` answers (kube-proxy prints its mode: iptables, ipvs, nftables).
pub const PROXY_MODE: &str = "ebpf";

async fn proxy_mode() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PROXY_MODE,
    )
        .into_response()
}

async fn readyz(State(ctx): State<HealthCtx>) -> Response {
    verdict(health::readyz(&ctx.health.snapshot()))
}

async fn metrics(State(ctx): State<MetricsCtx>) -> Response {
    let read = ctx.read_datapath.clone();
    let counters = tokio::task::spawn_blocking(move || read())
        .await
        .unwrap_or_else(|e| Err(format!("reading the data plane: {e}")));
    match scrape(&ctx.registry, &ctx.collector, counters) {
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {e}\n"),
        )
            .into_response(),
    }
}

/// One scrape: the counters just read, then the whole registry encoded (the sampled map
/// fills as they are).
pub fn scrape(
    registry: &Registry,
    collector: &DatapathCollector,
    counters: Result<Vec<PathCounter>, String>,
) -> Result<String, std::fmt::Error> {
    if let Err(error) = &counters {
        warn!(%error, "scrape: could not read the data plane's counters");
    }
    collector.set_counters(counters);
    encode_text(registry)
}

/// kube-proxy's metrics and health ports: a bind failure on one of them names kube-proxy.
pub const KUBE_PROXY_PORTS: [u16; 2] = [10249, 10256];

/// Binds `addr` (before the daemon touches anything else, so a busy port fails early).
///
/// `[::]:port` is one dual-stack socket (IPv4 arrives as v4-mapped addresses), so probes
/// and scrapes work on IPv4-only, dual-stack and IPv6-primary nodes alike; on a kernel
/// without IPv6 (`ipv6.disable=1`) it falls back to `0.0.0.0:port`. Any other address is
/// bound as given.
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, HttpError> {
    let listener = match addr {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => match bind_dual_stack(addr) {
            Ok(listener) => Ok(listener),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
                info!(%addr, fallback = %v4, what, "no IPv6 on this node: listening on IPv4 only");
                return std::net::TcpListener::bind(v4)
                    .and_then(into_tokio)
                    .map_err(|source| HttpError::bind(what, v4, source));
            }
            Err(e) => Err(e),
        },
        _ => std::net::TcpListener::bind(addr).and_then(into_tokio),
    };
    listener.map_err(|source| HttpError::bind(what, addr, source))
}

/// A `[::]` listener with IPV6_V6ONLY off (whatever `net.ipv6.bindv6only` says).
fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn6,
    };
    let SocketAddr::V6(v6) = addr else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(v6))?;
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    into_tokio(std::net::TcpListener::from(fd))
}

fn into_tokio(listener: std::net::TcpListener) -> std::io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// The hint a bind error carries: kube-proxy for its ports, the flag otherwise.
fn bind_hint(what: &str, addr: SocketAddr, source: &std::io::Error) -> String {
    let flag = if what == "metrics" {
        "--metrics-addr"
    } else {
        "--health-addr"
    };
    match source.kind() {
        std::io::ErrorKind::AddrInUse if KUBE_PROXY_PORTS.contains(&addr.port()) => format!(
            " (kube-proxy's port: while kube-proxy runs on this node, give {flag} another \
             port; the defaults {} and {} do not clash, see deploy/README.md)",
            crate::cli::run::DEFAULT_METRICS_ADDR,
            crate::cli::run::DEFAULT_HEALTH_ADDR
        ),
        std::io::ErrorKind::AddrInUse => {
            format!(
                " (another process holds port {}: pick another with {flag})",
                addr.port()
            )
        }
        _ => String::new(),
    }
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
    /// One sentence: what, where, why, and what to do (`hint`).
    #[error("cannot listen for {what} on {addr}: {error}{hint}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
        hint: String,
    },
    #[error("{what} server: {source}")]
    Serve {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl HttpError {
    fn bind(what: &'static str, addr: SocketAddr, source: std::io::Error) -> Self {
        let hint = bind_hint(what, addr, &source);
        Self::Bind {
            what,
            addr,
            error: source,
            hint,
        }
    }
}
