//! What the model keeps of each object: only the fields kube-proxy's semantics read, in
//! compact form, instead of the whole Service or EndpointSlice (an EndpointSlice of 10
//! endpoints is about 5 KiB as a k8s-openapi value and a few hundred bytes here). A change
//! to anything else (status other than the load balancer's VIP-mode ingress IPs,
//! managedFields, other annotations, `targetRef`) is then no change at all: it does not
//! even mark the Service dirty.
//!
//! A field a new feature needs is added here first.

use std::{
    collections::HashSet,
    net::{AddrParseError, IpAddr},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
};

use super::service::ANNOTATION_LAST_CHANGE_TRIGGER_TIME;

/// The parts of a Service the model reads (`spec` `None`: the Service has no spec).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ServiceView {
    pub spec: Option<ServiceSpec>,
    /// `status.loadBalancer.ingress[].ip` of the ingresses in VIP mode (an unset `ipMode`
    /// is VIP; `Proxy` ingresses are left to the load balancer, as kube-proxy does), as
    /// written, in order.
    pub lb_ingress_ips: Vec<String>,
    /// The `service-lb.io/lb-algorithm` annotation, as written.
    pub lb_algorithm: Option<String>,
}

impl ServiceView {
    pub fn of(spec: Option<&ServiceSpec>) -> Self {
        Self {
            spec: spec.map(trim_spec),
            lb_ingress_ips: Vec::new(),
            lb_algorithm: None,
        }
    }

    pub fn of_service(svc: &Service) -> Self {
        let lb_ingress_ips = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|ing| ing.ip_mode.as_deref() != Some(IP_MODE_PROXY))
            .filter_map(|ing| ing.ip.clone().filter(|ip| !ip.is_empty()))
            .collect();
        let lb_algorithm = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(super::maglev::ANNOTATION_LB_ALGORITHM))
            .cloned();
        Self {
            lb_ingress_ips,
            lb_algorithm,
            ..Self::of(svc.spec.as_ref())
        }
    }
}

/// `status.loadBalancer.ingress[].ipMode` of a load balancer that proxies (kube-proxy
/// programs nothing for its IP).
const IP_MODE_PROXY: &str = "Proxy";

/// What kube-proxy reads of a spec: type, cluster IPs, ports (name, protocol, port,
/// nodePort), session affinity, external IPs, both traffic policies, the health check
/// node port, source ranges and traffic distribution; the rest unset.
fn trim_spec(spec: &ServiceSpec) -> ServiceSpec {
    ServiceSpec {
        type_: spec.type_.clone(),
        cluster_ip: spec.cluster_ip.clone(),
        cluster_ips: spec.cluster_ips.clone(),
        ports: spec
            .ports
            .as_ref()
            .map(|ports| ports.iter().map(trim_port).collect()),
        session_affinity: spec.session_affinity.clone(),
        session_affinity_config: spec.session_affinity_config.clone(),
        external_ips: spec.external_ips.clone(),
        external_traffic_policy: spec.external_traffic_policy.clone(),
        internal_traffic_policy: spec.internal_traffic_policy.clone(),
        health_check_node_port: spec.health_check_node_port,
        load_balancer_source_ranges: spec.load_balancer_source_ranges.clone(),
        traffic_distribution: spec.traffic_distribution.clone(),
        ..ServiceSpec::default()
    }
}

fn trim_port(port: &ServicePort) -> ServicePort {
    ServicePort {
        name: port.name.clone(),
        protocol: port.protocol.clone(),
        port: port.port,
        node_port: port.node_port,
        ..ServicePort::default()
    }
}

/// An EndpointSlice's address type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AddressType {
    Ipv4,
    Ipv6,
    /// FQDN or anything else: never used.
    Other,
}

/// One port of a slice, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SlicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i32>,
}

/// An endpoint's first address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum EndpointAddress {
    Ip(IpAddr),
    /// Does not parse as an IP address (kept for the skip message).
    Invalid(Box<str>, AddrParseError),
    /// The endpoint lists no address.
    Missing,
}

/// One endpoint: its first address, conditions as written (nil kept), node, zone and
/// topology hints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EndpointView {
    pub address: EndpointAddress,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// `hints.forZones[].name` (empty: no zone hint).
    pub zone_hints: Vec<Arc<str>>,
    /// `hints.forNodes[].name` (empty: no node hint).
    pub node_hints: Vec<Arc<str>>,
}

/// The parts of an EndpointSlice the model reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SliceView {
    /// `EndpointSlice ns/name`, for skip messages.
    pub origin: String,
    pub address_type: AddressType,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointView>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`, as written.
    pub trigger_time: Option<String>,
}

impl SliceView {
    /// `namespace`: the slice's namespace after defaulting. Node names are shared through
    /// `nodes` (a cluster has few nodes and many endpoints).
    pub fn of(slice: &EndpointSlice, namespace: &str, nodes: &mut NodeNames) -> Self {
        let EndpointSlice {
            metadata,
            address_type,
            endpoints,
            ports,
        } = slice;
        let address_type = match address_type.as_str() {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            _ => AddressType::Other,
        };
        let trigger_time = metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME))
            .cloned();
        Self {
            origin: format!(
                "EndpointSlice {namespace}/{}",
                metadata.name.as_deref().unwrap_or_default()
            ),
            address_type,
            ports: ports
                .iter()
                .flatten()
                .map(|p: &EndpointPort| SlicePort {
                    name: p.name.clone(),
                    protocol: p.protocol.clone(),
                    port: p.port,
                })
                .collect(),
            endpoints: endpoints
                .iter()
                .map(|e| EndpointView::of(e, nodes))
                .collect(),
            trigger_time,
        }
    }
}

impl EndpointView {
    fn of(endpoint: &Endpoint, nodes: &mut NodeNames) -> Self {
        let address = match endpoint.addresses.first() {
            None => EndpointAddress::Missing,
            Some(text) => match text.parse::<IpAddr>() {
                Ok(ip) => EndpointAddress::Ip(ip),
                Err(e) => EndpointAddress::Invalid(text.as_str().into(), e),
            },
        };
        let conditions = endpoint.conditions.as_ref();
        Self {
            address,
            ready: conditions.and_then(|c| c.ready),
            serving: conditions.and_then(|c| c.serving),
            terminating: conditions.and_then(|c| c.terminating),
            node_name: endpoint.node_name.as_deref().map(|n| nodes.intern(n)),
            zone: endpoint.zone.as_deref().map(|z| nodes.intern(z)),
            zone_hints: endpoint
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| nodes.intern(&z.name))
                .collect(),
            node_hints: endpoint
                .hints
                .as_ref()
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| nodes.intern(&n.name))
                .collect(),
        }
    }
}

/// Node and zone names shared by every endpoint that names them. Names of nodes that left
/// stay (a few bytes per node the cluster ever had).
#[derive(Debug, Default)]
pub(super) struct NodeNames {
    names: HashSet<Arc<str>>,
}

impl NodeNames {
    pub fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.get(name) {
            return Arc::clone(known);
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert(Arc::clone(&name));
        name
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointConditions;

    use super::*;

    #[test]
    fn node_names_are_shared() {
        let mut nodes = NodeNames::default();
        let a = nodes.intern("n1");
        let b = nodes.intern("n1");
        let c = nodes.intern("n2");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(&*c, "n2");
    }

    #[test]
    fn endpoint_addresses_and_conditions_are_kept_as_written() {
        let mut nodes = NodeNames::default();
        let endpoint = |addresses: &[&str], ready: Option<bool>| Endpoint {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            conditions: Some(EndpointConditions {
                ready,
                serving: None,
                terminating: Some(true),
            }),
            node_name: Some("n1".into()),
            ..Endpoint::default()
        };
        let view = EndpointView::of(
            &endpoint(&["198.18.1.2", "198.18.1.3"], Some(false)),
            &mut nodes,
        );
        assert_eq!(
            view,
            EndpointView {
                address: EndpointAddress::Ip("198.18.1.2".parse().unwrap()),
                ready: Some(false),
                serving: None,
                terminating: Some(true),
                node_name: Some(Arc::from("n1")),
                zone: None,
                zone_hints: vec![],
                node_hints: vec![],
            }
        );
        let bad = EndpointView::of(&endpoint(&["198.18.1"], None), &mut nodes);
        assert!(
            matches!(&bad.address, EndpointAddress::Invalid(text, _) if &**text == "198.18.1"),
            "{bad:?}"
        );
        let none = EndpointView::of(&endpoint(&[], None), &mut nodes);
        assert_eq!(none.address, EndpointAddress::Missing);
    }

    #[test]
    fn north_south_fields_and_hints_are_kept() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "lb", "namespace": "ns", "annotations": {"x": "y"}},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "198.19.0.10",
                "externalIPs": ["198.19.200.11"], "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local", "healthCheckNodePort": 30000,
                "loadBalancerSourceRanges": ["198.19.200.0/25"],
                "trafficDistribution": "PreferClose", "loadBalancerClass": "x/y",
                "ports": [{"name": "http", "port": 80, "nodePort": 30080, "targetPort": 8080}],
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "198.19.200.200"}, {"ip": "198.19.200.201", "ipMode": "Proxy"},
                {"hostname": "lb.example"}, {"ip": "198.19.200.202", "ipMode": "VIP"},
            ]}},
        }))
        .expect("test Service");
        let view = ServiceView::of_service(&svc);
        assert_eq!(view.lb_ingress_ips, ["198.19.200.200", "198.19.200.202"]);
        let spec = view.spec.expect("a spec");
        assert_eq!(
            spec.external_ips.as_deref(),
            Some(&["198.19.200.11".to_string()][..])
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.health_check_node_port, Some(30000));
        assert_eq!(
            spec.load_balancer_source_ranges.as_deref(),
            Some(&["198.19.200.0/25".to_string()][..])
        );
        assert_eq!(spec.traffic_distribution.as_deref(), Some("PreferClose"));
        assert_eq!(spec.load_balancer_class, None, "not read by kube-proxy");
        let port = &spec.ports.expect("ports")[0];
        assert_eq!((port.port, port.node_port), (80, Some(30080)));
        assert_eq!(port.target_port, None);

        let mut nodes = NodeNames::default();
        let endpoint: Endpoint = serde_json::from_value(serde_json::json!({
            "addresses": ["198.18.1.2"], "nodeName": "n1", "zone": "zone-a",
            "hints": {"forZones": [{"name": "zone-a"}, {"name": "zone-b"}],
                      "forNodes": [{"name": "n1"}]},
        }))
        .expect("test Endpoint");
        let view = EndpointView::of(&endpoint, &mut nodes);
        assert_eq!(view.zone.as_deref(), Some("zone-a"));
        let names = |v: &[Arc<str>]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&view.zone_hints), ["zone-a", "zone-b"]);
        assert_eq!(names(&view.node_hints), ["n1"]);
        assert!(Arc::ptr_eq(
            view.node_name.as_ref().unwrap(),
            &view.node_hints[0]
        ));
    }

    #[test]
    fn a_trimmed_spec_keeps_what_the_model_reads() {
        let spec = ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("198.19.0.10".into()),
            cluster_ips: Some(vec!["198.19.0.10".into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            session_affinity: Some("ClientIP".into()),
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ..ServiceSpec::default()
        };
        let view = ServiceView::of(Some(&spec)).spec.unwrap();
        assert_eq!(view.selector, None);
        assert_eq!(view.ports.as_ref().unwrap()[0].app_protocol, None);
        let kept = ServiceSpec {
            selector: None,
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                ..ServicePort::default()
            }]),
            ..spec
        };
        assert_eq!(view, kept);
    }
}
