//! Health check node ports, as kube-proxy serves them (`pkg/proxy/healthcheck/
//! service_health.go`): one HTTP listener per LoadBalancer Service with
//! `externalTrafficPolicy: Local`, on its `healthCheckNodePort`, so that the cloud load
//! balancer sends traffic only to nodes with a local endpoint.
//!
//! Every request (any path, any method) gets `Content-Type: application/json`,
//! `X-Content-Type-Options: nosniff`, and kube-proxy's body, indented with tabs as its
//! dedented template prints it:
//!
//! ```text
//! {
//!   "service": {
//!     "namespace": "ns",
//!     "name": "name"
//!   },
//!   "localEndpoints": 1,
//!   "serviceProxyHealthy": true
//! }
//! ```
//!
//! with 200 when the Service has a ready endpoint on this node and the proxy is healthy,
//! 503 otherwise. `serviceProxyHealthy` is kube-proxy's `IsHealthy()`: no change pending
//! for longer than the health timeout; like upstream it ignores the Node's eligibility
//! (deletion, `ToBeDeletedByClusterAutoscaler`), which only `/healthz` reports.
//!
//! Listeners open when a Service gains a health check, close when it loses it (or the
//! Service goes), and move when the port changes; the count is updated in place. A port
//! that cannot be bound is logged and retried on the next sync, as kube-proxy does.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    health::{self, Health},
    http::{self, HttpError},
};
use crate::model::{HealthCheck, ServiceName};

/// kube-proxy's answer for one health check port.
pub fn answer(name: &ServiceName, local_endpoints: usize, proxy_healthy: bool) -> (u16, String) {
    let code = if local_endpoints != 0 && proxy_healthy {
        200
    } else {
        503
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        go_quote(&name.namespace),
        go_quote(&name.name),
    );
    (code, body)
}

/// Go's `%q` for the characters Kubernetes names may hold (and a safe escape otherwise).
fn go_quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[derive(Clone)]
struct Ctx {
    name: Arc<ServiceName>,
    endpoints: Arc<AtomicUsize>,
    health: Arc<Health>,
    timeout: Duration,
}

async fn handle(State(ctx): State<Ctx>) -> Response {
    let healthy = health::proxy_healthy(&ctx.health.snapshot(), SystemTime::now(), ctx.timeout);
    let (code, body) = answer(&ctx.name, ctx.endpoints.load(Ordering::Relaxed), healthy);
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

struct Instance {
    port: u16,
    endpoints: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

/// The open health check ports.
pub struct ServiceHealthServers {
    /// Addresses to listen on; `None`: every address (`[::]`, dual-stack).
    listen: Option<Vec<IpAddr>>,
    health: Arc<Health>,
    timeout: Duration,
    /// Cancelled on daemon shutdown: every listener stops.
    shutdown: CancellationToken,
    open: BTreeMap<ServiceName, Instance>,
}

impl ServiceHealthServers {
    /// `listen`: the node addresses `--nodeport-addresses` selects, or `None` for all.
    pub fn new(
        listen: Option<Vec<IpAddr>>,
        health: Arc<Health>,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            listen,
            health,
            timeout,
            shutdown,
            open: BTreeMap::new(),
        }
    }

    /// The ports open now, by Service.
    pub fn ports(&self) -> BTreeMap<ServiceName, u16> {
        self.open.iter().map(|(n, i)| (n.clone(), i.port)).collect()
    }

    /// Makes the open listeners those of `wanted` (every Service that needs one): closes
    /// the others, opens the missing ones, updates the counts. Returns the ports that
    /// could not be opened (tried again next time).
    pub async fn sync(
        &mut self,
        wanted: &BTreeMap<ServiceName, HealthCheck>,
    ) -> Vec<(ServiceName, HttpError)> {
        let stale: Vec<ServiceName> = self
            .open
            .iter()
            .filter(|(name, i)| wanted.get(*name).map(|h| h.port) != Some(i.port))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(instance) = self.open.remove(&name) {
                info!(service = %name, port = instance.port, "closing health check node port");
                instance.cancel.cancel();
            }
        }
        let mut failed = Vec::new();
        for (name, check) in wanted {
            if let Some(open) = self.open.get(name) {
                open.endpoints
                    .store(check.local_endpoints, Ordering::Relaxed);
                continue;
            }
            match self.open_one(name, *check).await {
                Ok(instance) => {
                    info!(service = %name, port = check.port, local_endpoints = check.local_endpoints, "opened health check node port");
                    self.open.insert(name.clone(), instance);
                }
                Err(e) => {
                    warn!(service = %name, port = check.port, error = %e, "cannot open the health check node port; trying again on the next sync");
                    failed.push((name.clone(), e));
                }
            }
        }
        failed
    }

    async fn open_one(
        &self,
        name: &ServiceName,
        check: HealthCheck,
    ) -> Result<Instance, HttpError> {
        let addrs: Vec<SocketAddr> = match &self.listen {
            None => vec![SocketAddr::new(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                check.port,
            )],
            Some(ips) => ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, check.port))
                .collect(),
        };
        // Bind every address before serving any: a failure leaves nothing half open.
        let mut listeners = Vec::with_capacity(addrs.len());
        for addr in addrs {
            listeners.push(http::bind(addr, "health check node port").await?);
        }
        let endpoints = Arc::new(AtomicUsize::new(check.local_endpoints));
        let cancel = self.shutdown.child_token();
        let ctx = Ctx {
            name: Arc::new(name.clone()),
            endpoints: endpoints.clone(),
            health: self.health.clone(),
            timeout: self.timeout,
        };
        for listener in listeners {
            let router = Router::new().fallback(handle).with_state(ctx.clone());
            let cancel = cancel.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    http::serve(listener, router, "health check node port", cancel).await
                {
                    warn!(error = %e, "health check node port stopped");
                }
            });
        }
        Ok(Instance {
            port: check.port,
            endpoints,
            cancel,
        })
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for instance in self.open.values() {
            instance.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> ServiceName {
        ServiceName {
            namespace: "ns1".into(),
            name: "svc1".into(),
        }
    }

    /// The body exactly as kube-proxy's dedented template prints it.
    const HEALTHY_ONE: &str = "{\n\t\"service\": {\n\t\t\"namespace\": \"ns1\",\n\t\t\"name\": \"svc1\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}";

    #[test]
    fn ok_with_a_local_endpoint_and_a_healthy_proxy() {
        assert_eq!(answer(&name(), 1, true), (200, HEALTHY_ONE.to_owned()));
    }

    #[test]
    fn unavailable_without_local_endpoints_or_when_the_proxy_is_unhealthy() {
        let (code, body) = answer(&name(), 0, true);
        assert_eq!(code, 503);
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"service": {"namespace": "ns1", "name": "svc1"},
                               "localEndpoints": 0, "serviceProxyHealthy": true})
        );
        let (code, body) = answer(&name(), 3, false);
        assert_eq!(code, 503);
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["localEndpoints"], 3);
        assert_eq!(json["serviceProxyHealthy"], false);
    }

    /// Raw HTTP/1.1 GET on loopback: (status, headers, body).
    async fn get(port: u16) -> std::io::Result<(u16, String, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, head.to_ascii_lowercase(), body.to_owned()))
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// Opened, counted, moved and closed on loopback (an unprivileged socket test).
    #[tokio::test]
    async fn ports_open_update_and_close_with_the_services() {
        let shutdown = CancellationToken::new();
        let mut servers = ServiceHealthServers::new(
            Some(vec!["127.0.0.1".parse().unwrap()]),
            Arc::new(Health::new()),
            Duration::from_secs(120),
            shutdown.clone(),
        );
        let port = free_port();
        let mut wanted = BTreeMap::from([(
            name(),
            HealthCheck {
                port,
                local_endpoints: 1,
            },
        )]);
        assert!(servers.sync(&wanted).await.is_empty());
        let (status, head, body) = get(port).await.expect("open");
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert_eq!(body, HEALTHY_ONE);

        wanted.get_mut(&name()).unwrap().local_endpoints = 0;
        assert!(servers.sync(&wanted).await.is_empty());
        assert_eq!(get(port).await.expect("still open").0, 503);

        let moved = free_port();
        wanted.get_mut(&name()).unwrap().port = moved;
        wanted.get_mut(&name()).unwrap().local_endpoints = 2;
        assert!(servers.sync(&wanted).await.is_empty());
        assert_eq!(get(moved).await.expect("moved").0, 200);
        assert!(closed(port).await, "the old port closes");

        servers.sync(&BTreeMap::new()).await;
        assert!(closed(moved).await, "closed with the Service");
        assert!(servers.ports().is_empty());
        shutdown.cancel();
    }

    /// The port refuses connections (after the server task has noticed its cancellation).
    async fn closed(port: u16) -> bool {
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
