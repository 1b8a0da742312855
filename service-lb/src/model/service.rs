//! A Service's ClusterIP frontends, as kube-proxy programs them: one frontend per cluster IP
//! (the first of each family in `spec.clusterIPs`, else `spec.clusterIP`) and per TCP/UDP
//! port; nothing for headless, ExternalName or not-yet-allocated Services.

use std::net::IpAddr;

use k8s_openapi::{
    api::core::v1::{ServicePort, ServiceSpec},
    jiff::Timestamp,
};

use super::{
    endpoints, reason,
    view::{ServiceView, SliceView},
    DesiredFrontend, Protocol, Scope, ServiceDesired, ServiceName, Skip,
};

/// Annotation the EndpointSlice controller sets to the time of the change it reflects.
pub(super) const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// sessionAffinity ClientIP timeout when the Service sets none (kube-proxy's default).
pub(super) const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;
/// Largest timeout the API accepts.
const MAX_AFFINITY_TIMEOUT_S: i32 = 86400;

/// The desired state of `name`: `service` is `None` when it is gone (or not ours); `slices`
/// are its EndpointSlices, sorted by name.
pub(super) fn desired(
    name: &ServiceName,
    service: Option<&ServiceView>,
    slices: &[&SliceView],
    node_name: Option<&str>,
) -> ServiceDesired {
    let mut desired = ServiceDesired {
        name: name.clone(),
        frontends: Vec::new(),
        skipped: Vec::new(),
        last_change_trigger_time: last_change_trigger_time(slices),
    };
    let Some(spec) = service.and_then(|s| s.spec.as_ref()) else {
        return desired;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return desired;
    }
    let skipped = &mut desired.skipped;
    let ips = cluster_ips(name, spec, skipped);
    let affinity_timeout_s = affinity_timeout(name, spec, skipped);
    let ports = service_ports(name, spec, skipped);
    for addr in ips {
        for port in &ports {
            let selected = endpoints::select(
                endpoints::Wanted {
                    ipv6: addr.is_ipv6(),
                    port_name: &port.name,
                    protocol: port.protocol,
                },
                slices,
                node_name,
                skipped,
            );
            desired.frontends.push(DesiredFrontend {
                addr,
                port: port.port,
                protocol: port.protocol,
                scope: Scope::External,
                port_name: port.name.clone(),
                backends: selected.backends,
                serving: selected.serving,
                affinity_timeout_s,
            });
        }
    }
    desired.frontends.sort();
    dedup_skips(&mut desired.skipped);
    desired
}

/// The cluster IPs to program: none when headless (`None`) or not allocated; the first
/// of each family otherwise.
fn cluster_ips(name: &ServiceName, spec: &ServiceSpec, skipped: &mut Vec<Skip>) -> Vec<IpAddr> {
    let listed: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    if listed.contains(&"None") {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for text in listed.into_iter().filter(|ip| !ip.is_empty()) {
        let object = format!("Service {name} clusterIP '{text}'");
        match text.parse::<IpAddr>() {
            Err(e) => skipped.push(Skip {
                object,
                reason: reason::INVALID_IP,
                detail: e.to_string(),
            }),
            Ok(ip) if ips.iter().any(|seen| seen.is_ipv6() == ip.is_ipv6()) => skipped.push(Skip {
                object,
                reason: reason::INVALID_IP,
                detail: "a second cluster IP of the same family; the first one is used".into(),
            }),
            Ok(ip) => ips.push(ip),
        }
    }
    ips
}

/// A usable Service port.
struct Port {
    name: String,
    port: u16,
    protocol: Protocol,
}

fn service_ports(name: &ServiceName, spec: &ServiceSpec, skipped: &mut Vec<Skip>) -> Vec<Port> {
    let mut ports: Vec<Port> = Vec::new();
    for (index, p) in spec.ports.iter().flatten().enumerate() {
        let object = port_object(name, index, p);
        let protocol = match parse_protocol(p.protocol.as_deref()) {
            Ok(protocol) => protocol,
            Err(detail) => {
                skipped.push(Skip {
                    object,
                    reason: reason::UNSUPPORTED_PROTOCOL,
                    detail,
                });
                continue;
            }
        };
        let Some(port) = valid_port(p.port) else {
            skipped.push(Skip {
                object,
                reason: reason::INVALID_PORT,
                detail: format!("port {} is outside 1..=65535", p.port),
            });
            continue;
        };
        if ports
            .iter()
            .any(|seen| seen.port == port && seen.protocol == protocol)
        {
            skipped.push(Skip {
                object,
                reason: reason::DUPLICATE_PORT,
                detail: format!("port {port} is listed twice; the first one is used"),
            });
            continue;
        }
        ports.push(Port {
            name: p.name.clone().unwrap_or_default(),
            port,
            protocol,
        });
    }
    ports
}

fn port_object(name: &ServiceName, index: usize, port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(port_name) if !port_name.is_empty() => format!("Service {name} port '{port_name}'"),
        _ => format!("Service {name} port #{index}"),
    }
}

/// TCP (also when unset) or UDP; anything else is unsupported.
pub(super) fn parse_protocol(protocol: Option<&str>) -> Result<Protocol, String> {
    match protocol {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Err("SCTP is not supported yet".into()),
        Some(other) => Err(format!("unknown protocol '{other}'")),
    }
}

pub(super) fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// 0 without ClientIP affinity; the Service's timeout, or kube-proxy's default.
fn affinity_timeout(name: &ServiceName, spec: &ServiceSpec, skipped: &mut Vec<Skip>) -> u32 {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return 0;
    }
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match configured {
        None => DEFAULT_AFFINITY_TIMEOUT_S,
        Some(t @ 1..=MAX_AFFINITY_TIMEOUT_S) => t.unsigned_abs(),
        Some(t) => {
            skipped.push(Skip {
                object: format!("Service {name} sessionAffinityConfig"),
                reason: reason::INVALID_AFFINITY_TIMEOUT,
                detail: format!(
                    "timeoutSeconds {t} is outside 1..={MAX_AFFINITY_TIMEOUT_S}; using {DEFAULT_AFFINITY_TIMEOUT_S}"
                ),
            });
            DEFAULT_AFFINITY_TIMEOUT_S
        }
    }
}

/// The latest trigger time of the slices (compared as instants; kept as written).
fn last_change_trigger_time(slices: &[&SliceView]) -> Option<String> {
    slices
        .iter()
        .filter_map(|s| {
            let text = s.trigger_time.as_ref()?;
            let at: Timestamp = text.parse().ok()?;
            Some((at, text))
        })
        .max_by_key(|(at, _)| *at)
        .map(|(_, text)| text.clone())
}

fn dedup_skips(skipped: &mut Vec<Skip>) {
    let mut seen: Vec<Skip> = Vec::with_capacity(skipped.len());
    for skip in skipped.drain(..) {
        if !seen.contains(&skip) {
            seen.push(skip);
        }
    }
    *skipped = seen;
}
