//! A Service's frontends, as kube-proxy programs them: one ClusterIP frontend per cluster IP
//! (the first of each family in `spec.clusterIPs`, else `spec.clusterIP`) and per TCP/UDP
//! port, sending to the cluster endpoints (iTP=Cluster) or this node's (iTP=Local); the
//! NodePort, externalIP and LoadBalancer frontends of each family (`north_south`); nothing
//! for headless, ExternalName or not-yet-allocated Services.

use std::net::IpAddr;

use k8s_openapi::{
    api::core::v1::{ServicePort, ServiceSpec},
    jiff::Timestamp,
};

use super::maglev::{LbAlgorithm, ANNOTATION_LB_ALGORITHM};
use super::{
    endpoints,
    north_south::{
        service_externally_accessible, ExternalFrontend, FrontendKind, HealthCheck,
        NodePortAddresses, Snat, SourceRange, TrafficPolicy,
    },
    reason,
    topology::{NodeTopology, PortPolicy},
    view::{ServiceView, SliceView},
    DesiredBackend, DesiredFrontend, NoEndpoints, Protocol, Scope, ServiceDesired, ServiceName,
    Skip,
};

/// Annotation the EndpointSlice controller sets to the time of the change it reflects.
pub(super) const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// sessionAffinity ClientIP timeout when the Service sets none (kube-proxy's default).
pub(super) const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;
/// Largest timeout the API accepts.
const MAX_AFFINITY_TIMEOUT_S: i32 = 86400;

/// What the model knows of this node.
#[derive(Clone, Copy, Debug)]
pub(super) struct NodeContext<'a> {
    pub node_name: Option<&'a str>,
    /// The Node's `topology.kubernetes.io/zone` label.
    pub zone: Option<&'a str>,
    /// This node's addresses (Node object and external interfaces).
    pub addresses: &'a [IpAddr],
    pub nodeport: &'a NodePortAddresses,
    /// `--lb-algorithm`.
    pub lb_algorithm: super::maglev::LbAlgorithm,
}

/// The Service-wide inputs of its north-south frontends.
struct External {
    type_: Option<String>,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<SourceRange>,
    internal_local: bool,
    external_local: bool,
}

/// The Service's north-south backend selection: its `service-lb.io/lb-algorithm`
/// annotation, else the daemon's default (an unknown value: the default, reported).
fn lb_algorithm(
    name: &ServiceName,
    view: &ServiceView,
    default: LbAlgorithm,
    skipped: &mut Vec<Skip>,
) -> LbAlgorithm {
    LbAlgorithm::for_service(view.lb_algorithm.as_deref(), default).unwrap_or_else(|detail| {
        skipped.push(Skip {
            object: format!("Service {name} annotation {ANNOTATION_LB_ALGORITHM}"),
            reason: reason::INVALID_LB_ALGORITHM,
            detail,
        });
        default
    })
}

/// The desired state of `name`: `service` is `None` when it is gone (or not ours); `slices`
/// are its EndpointSlices, sorted by name.
pub(super) fn desired(
    name: &ServiceName,
    service: Option<&ServiceView>,
    slices: &[&SliceView],
    node: NodeContext<'_>,
) -> ServiceDesired {
    let mut desired = ServiceDesired {
        name: name.clone(),
        frontends: Vec::new(),
        external: Vec::new(),
        health_check: None,
        skipped: Vec::new(),
        last_change_trigger_time: last_change_trigger_time(slices),
    };
    let Some(view) = service else {
        return desired;
    };
    let Some(spec) = view.spec.as_ref() else {
        return desired;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return desired;
    }
    let skipped = &mut desired.skipped;
    let ips = cluster_ips(name, spec, skipped);
    let affinity_timeout_s = affinity_timeout(name, spec, skipped);
    let ports = service_ports(name, spec, skipped);
    let external = external_inputs(name, view, skipped);
    let maglev = lb_algorithm(name, view, node.lb_algorithm, skipped) == LbAlgorithm::Maglev;
    let accessible =
        service_externally_accessible(external.type_.as_deref(), !external.external_ips.is_empty());
    let external_local = accessible && external.external_local;
    let health_port = health_check_port(name, spec, external_local, skipped);
    let topology = NodeTopology {
        node_name: node.node_name,
        zone: node.zone,
    };
    let mut local_ready = 0;
    for (family_index, addr) in ips.iter().copied().enumerate() {
        let ipv6 = addr.is_ipv6();
        let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
            ips.iter()
                .copied()
                .filter(|ip| ip.is_ipv6() == ipv6)
                .collect()
        };
        let external_ips = of_family(&external.external_ips);
        let lb_ips = of_family(&external.lb_ips);
        let node_ips = node.nodeport.select(&of_family(node.addresses));
        for port in &ports {
            let policy = PortPolicy {
                internal_local: external.internal_local,
                external_local,
                externally_accessible: port.node_port.is_some()
                    || !external_ips.is_empty()
                    || !lb_ips.is_empty(),
            };
            let selected = endpoints::select(
                endpoints::Wanted {
                    ipv6,
                    port_name: &port.name,
                    protocol: port.protocol,
                },
                slices,
                topology,
                policy,
                skipped,
            );
            if family_index == 0 {
                local_ready += selected.local_ready;
            }
            let cluster = selected.cluster.clone().unwrap_or_default();
            let local = selected.local.clone().unwrap_or_default();
            let no_endpoints = |set: &[DesiredBackend]| {
                if set.is_empty() && selected.has_any {
                    NoEndpoints::Drop
                } else {
                    NoEndpoints::Reject
                }
            };
            let internal = if external.internal_local {
                &local
            } else {
                &cluster
            };
            desired.frontends.push(DesiredFrontend {
                addr,
                port: port.port,
                protocol: port.protocol,
                scope: Scope::External,
                port_name: port.name.clone(),
                backends: internal.clone(),
                serving: selected.serving.clone(),
                affinity_timeout_s,
                no_endpoints: no_endpoints(internal),
            });
            let lb_ranges = lb_source_ranges(&external.source_ranges, ipv6, &node_ips);
            let targets = port
                .node_port
                .into_iter()
                .flat_map(|np| {
                    node_ips
                        .iter()
                        .map(move |ip| (FrontendKind::NodePort, *ip, np))
                })
                .chain(
                    external_ips
                        .iter()
                        .map(|ip| (FrontendKind::ExternalIp, *ip, port.port)),
                )
                .chain(
                    lb_ips
                        .iter()
                        .map(|ip| (FrontendKind::LoadBalancer, *ip, port.port)),
                );
            for (kind, ip, number) in targets {
                let source_ranges = if kind == FrontendKind::LoadBalancer {
                    lb_ranges(ip)
                } else {
                    Vec::new()
                };
                let frontend =
                    |scope, policy, backends: &Vec<DesiredBackend>, snat| ExternalFrontend {
                        kind,
                        addr: ip,
                        port: number,
                        protocol: port.protocol,
                        scope,
                        policy,
                        port_name: port.name.clone(),
                        backends: backends.clone(),
                        no_endpoints: no_endpoints(backends),
                        snat,
                        source_ranges: source_ranges.clone(),
                        affinity_timeout_s,
                        maglev,
                    };
                if external_local {
                    desired.external.push(frontend(
                        Scope::External,
                        TrafficPolicy::Local,
                        &local,
                        Snat::Never,
                    ));
                    desired.external.push(frontend(
                        Scope::Internal,
                        TrafficPolicy::Local,
                        &cluster,
                        Snat::FromNode,
                    ));
                } else {
                    desired.external.push(frontend(
                        Scope::External,
                        TrafficPolicy::Cluster,
                        &cluster,
                        Snat::Always,
                    ));
                }
            }
        }
    }
    desired.health_check = health_port.map(|port| HealthCheck {
        port,
        local_endpoints: local_ready,
    });
    desired.frontends.sort();
    desired.external.sort();
    dedup_skips(&mut desired.skipped);
    desired
}

/// The allowed sources of an LB IP of the family: the Service's ranges of that family, plus
/// the LB IP itself when a range contains a node address (empty: no restriction).
fn lb_source_ranges<'a>(
    ranges: &'a [SourceRange],
    ipv6: bool,
    node_ips: &'a [IpAddr],
) -> impl Fn(IpAddr) -> Vec<SourceRange> + 'a {
    move |lb_ip| {
        let mut of_family: Vec<SourceRange> = ranges
            .iter()
            .copied()
            .filter(|r| r.addr.is_ipv6() == ipv6)
            .collect();
        if of_family.is_empty() {
            return of_family;
        }
        if node_ips
            .iter()
            .any(|n| of_family.iter().any(|r| r.contains(*n)))
        {
            of_family.push(SourceRange::host(lb_ip));
        }
        of_family.sort_unstable();
        of_family.dedup();
        of_family
    }
}

/// externalIPs, LB ingress IPs, source ranges and both policies; unusable values skipped.
fn external_inputs(name: &ServiceName, view: &ServiceView, skipped: &mut Vec<Skip>) -> External {
    let spec = view.spec.as_ref();
    let mut parse_ips = |what: &str, list: &[String]| -> Vec<IpAddr> {
        let mut out = Vec::new();
        for text in list {
            match text.trim().parse::<IpAddr>() {
                Ok(ip) if !out.contains(&ip) => out.push(ip),
                Ok(_) => {}
                Err(e) => skipped.push(Skip {
                    object: format!("Service {name} {what} '{text}'"),
                    reason: reason::INVALID_IP,
                    detail: e.to_string(),
                }),
            }
        }
        out
    };
    let external_ips = parse_ips(
        "externalIP",
        spec.and_then(|s| s.external_ips.as_deref())
            .unwrap_or_default(),
    );
    let lb_ips = parse_ips("status.loadBalancer.ingress ip", &view.lb_ingress_ips);
    let mut source_ranges = Vec::new();
    for text in spec
        .and_then(|s| s.load_balancer_source_ranges.as_deref())
        .unwrap_or_default()
    {
        match text.trim().parse::<SourceRange>() {
            Ok(range) => source_ranges.push(range),
            Err(detail) => skipped.push(Skip {
                object: format!("Service {name} loadBalancerSourceRanges '{text}'"),
                reason: reason::INVALID_SOURCE_RANGE,
                detail,
            }),
        }
    }
    External {
        type_: spec.and_then(|s| s.type_.clone()),
        external_ips,
        lb_ips,
        source_ranges,
        internal_local: spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local"),
        external_local: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
    }
}

/// kube-proxy's `NeedsHealthCheck`: a LoadBalancer with eTP=Local, and its port.
fn health_check_port(
    name: &ServiceName,
    spec: &ServiceSpec,
    external_local: bool,
    skipped: &mut Vec<Skip>,
) -> Option<u16> {
    if spec.type_.as_deref() != Some("LoadBalancer") || !external_local {
        return None;
    }
    let port = spec.health_check_node_port.unwrap_or(0);
    let valid = valid_port(port);
    if valid.is_none() {
        skipped.push(Skip {
            object: format!("Service {name} healthCheckNodePort"),
            reason: reason::INVALID_PORT,
            detail: format!("healthCheckNodePort {port} is outside 1..=65535; no health check"),
        });
    }
    valid
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
    /// `nodePort`, when set and valid.
    node_port: Option<u16>,
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
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => {
                let valid = valid_port(n);
                if valid.is_none() {
                    skipped.push(Skip {
                        object: port_object(name, index, p),
                        reason: reason::INVALID_PORT,
                        detail: format!("nodePort {n} is outside 1..=65535; no NodePort"),
                    });
                }
                valid
            }
        };
        ports.push(Port {
            name: p.name.clone().unwrap_or_default(),
            port,
            protocol,
            node_port,
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
