//! Golden tables in the style of kube-proxy's packet-flow tests (pkg/proxy/nftables
//! proxier_test.go: TestExternalTrafficPolicyLocal, TestExternalTrafficPolicyCluster,
//! TestLoadBalancer, TestNodePorts): for each client kind and destination, the backends a
//! new flow may reach and whether its source is SNATed, or DROP / REJECT. The expected
//! rows are upstream's, with upstream's addresses mapped onto the test ranges:
//!
//! | upstream | here |
//! |---|---|
//! | pod client 10.0.0.2 | 198.18.1.2 |
//! | remote endpoint 10.180.0.1 (no nodeName) | 198.18.2.1 |
//! | local endpoint 10.180.2.1 (nodeName = this node) | 198.18.1.1 |
//! | ClusterIP 172.30.0.41 | 198.19.0.41 |
//! | node IP 192.168.0.2 / alternate 192.168.1.2 | 198.19.255.2 / 198.19.255.130 |
//! | externalIP 192.168.99.11 | 198.19.200.11 |
//! | LB IPs 1.2.3.4, 5.6.7.8 | 198.19.200.200, 198.19.200.201 |
//! | external client 203.0.113.2 / blocked 203.0.113.130 | 198.19.200.2 / 198.19.200.130 |
//! | source ranges 192.168.0.0/24, 203.0.113.0/25 | 198.19.255.0/25, 198.19.200.0/25 |
//!
//! `resolve` is how the data plane is to read the model's frontends (the contract of the
//! later kernel round): an external client uses the External-scope entry; a pod or the node
//! the Internal-scope entry when there is one, else the External one; source ranges are
//! checked first; SNAT follows the entry's [`Snat`].

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;
use rstest::rstest;
use serde_json::{json, Value};

use super::{
    reason, ClusterState, FrontendKind, NoEndpoints, NodePortAddresses, Scope, ServiceDesired,
    ServiceName, Snat, TrafficPolicy,
};

const NODE: &str = "test-node";
const POD: &str = "198.18.1.2";
const NODE_IP: &str = "198.19.255.2";
const NODE_IP_ALT: &str = "198.19.255.130";
const EXTERNAL: &str = "198.19.200.2";
const EXTERNAL_BLOCKED: &str = "198.19.200.130";
const CLUSTER_IP: &str = "198.19.0.41";
const EXTERNAL_IP: &str = "198.19.200.11";
const LB1: &str = "198.19.200.200";
const LB2: &str = "198.19.200.201";
const EP_REMOTE: &str = "198.18.2.1:80";
const EP_LOCAL: &str = "198.18.1.1:80";
const BOTH: &str = "198.18.1.1:80, 198.18.2.1:80";

#[derive(Clone, Copy, Debug)]
enum Client {
    Pod,
    Node,
    External,
    ExternalBlocked,
}

impl Client {
    fn addr(self) -> IpAddr {
        match self {
            Client::Pod => POD,
            Client::Node => NODE_IP,
            Client::External => EXTERNAL,
            Client::ExternalBlocked => EXTERNAL_BLOCKED,
        }
        .parse()
        .expect("test address")
    }
    fn in_cluster(self) -> bool {
        matches!(self, Client::Pod | Client::Node)
    }
}

fn state(services: Vec<Value>, endpoints: Value, nodeport: NodePortAddresses) -> ClusterState {
    let mut state = ClusterState::new(Some(NODE.into()));
    state.set_nodeport_addresses(nodeport);
    state.apply_node(Event::<Node>::Init);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "InternalIP", "address": NODE_IP_ALT},
            {"type": "InternalIP", "address": "fd00:ff::2"},
            {"type": "Hostname", "address": NODE},
        ]},
    }))
    .expect("test Node");
    state.apply_node(Event::InitApply(node));
    state.apply_node(Event::<Node>::InitDone);
    state.apply_service(Event::<Service>::Init);
    for spec in services {
        let svc: Service = serde_json::from_value(spec).expect("test Service");
        state.apply_service(Event::InitApply(svc));
    }
    state.apply_service(Event::<Service>::InitDone);
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "svc1-abc", "namespace": "ns1",
                     "labels": {"kubernetes.io/service-name": "svc1"}},
        "addressType": "IPv4",
        "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("test EndpointSlice");
    state.apply_endpoint_slice(Event::<EndpointSlice>::Init);
    state.apply_endpoint_slice(Event::InitApply(slice));
    state.apply_endpoint_slice(Event::<EndpointSlice>::InitDone);
    state
}

fn svc1(spec: Value, status: Value) -> Value {
    json!({
        "metadata": {"name": "svc1", "namespace": "ns1"},
        "spec": spec,
        "status": status,
    })
}

fn desired(state: &ClusterState) -> ServiceDesired {
    state.desired(&ServiceName {
        namespace: "ns1".into(),
        name: "svc1".into(),
    })
}

/// What a new flow from `client` to `dest:port` gets: "a:p, b:p" (sorted) with " masq"
/// when SNATed, "DROP", "REJECT", or "" when nothing serves that destination.
fn resolve(d: &ServiceDesired, client: Client, dest: &str, port: u16) -> String {
    let dest: IpAddr = dest.parse().expect("test address");
    if let Some(f) = d
        .frontends
        .iter()
        .find(|f| f.addr == dest && f.port == port)
    {
        // ClusterIP: pods only in these tables (no SNAT).
        return render(&f.backends, f.no_endpoints, false);
    }
    let entries: Vec<_> = d
        .external
        .iter()
        .filter(|f| f.addr == dest && f.port == port)
        .collect();
    let pick = |scope| entries.iter().find(|f| f.scope == scope).copied();
    let entry = if client.in_cluster() {
        pick(Scope::Internal).or_else(|| pick(Scope::External))
    } else {
        pick(Scope::External)
    };
    let Some(f) = entry else {
        return String::new();
    };
    if !f.source_ranges.is_empty() && !f.source_ranges.iter().any(|r| r.contains(client.addr())) {
        return "DROP".into();
    }
    let masq = match f.snat {
        Snat::Always => true,
        Snat::FromNode => matches!(client, Client::Node),
        Snat::Never => false,
    };
    render(&f.backends, f.no_endpoints, masq)
}

fn render(backends: &[super::DesiredBackend], none: NoEndpoints, masq: bool) -> String {
    if backends.is_empty() {
        return match none {
            NoEndpoints::Drop => "DROP".into(),
            NoEndpoints::Reject => "REJECT".into(),
        };
    }
    let mut addrs: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    addrs.sort();
    let list = addrs.join(", ");
    if masq {
        format!("{list} masq")
    } else {
        list
    }
}

fn two_endpoints() -> Value {
    json!([
        {"addresses": ["198.18.2.1"]},
        {"addresses": ["198.18.1.1"], "nodeName": NODE},
    ])
}

fn lb_service(etp: &str) -> Value {
    svc1(
        json!({
            "type": "LoadBalancer", "externalTrafficPolicy": etp,
            "clusterIP": CLUSTER_IP, "externalIPs": [EXTERNAL_IP],
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
            "healthCheckNodePort": 30000,
        }),
        json!({"loadBalancer": {"ingress": [{"ip": LB1}]}}),
    )
}

// TestExternalTrafficPolicyLocal
#[rstest]
#[case::pod_to_cluster_ip_hits_both_unmasqueraded(Client::Pod, CLUSTER_IP, 80, BOTH)]
#[case::pod_to_external_ip_hits_both_unmasqueraded(Client::Pod, EXTERNAL_IP, 80, BOTH)]
#[case::external_to_external_ip_hits_only_local_unmasqueraded(
    Client::External,
    EXTERNAL_IP,
    80,
    EP_LOCAL
)]
#[case::pod_to_lb_ip_hits_both_unmasqueraded(Client::Pod, LB1, 80, BOTH)]
#[case::external_to_lb_ip_hits_only_local_unmasqueraded(Client::External, LB1, 80, EP_LOCAL)]
#[case::pod_to_node_port_hits_both_unmasqueraded(Client::Pod, NODE_IP, 3001, BOTH)]
#[case::external_to_node_port_hits_only_local_unmasqueraded(
    Client::External,
    NODE_IP,
    3001,
    EP_LOCAL
)]
// The nftables proxier's external chain for eTP=Local: traffic from the node itself is
// masqueraded and sent to the cluster endpoints.
#[case::node_to_node_port_hits_both_masqueraded(
    Client::Node,
    NODE_IP,
    3001,
    "198.18.1.1:80, 198.18.2.1:80 masq"
)]
fn external_traffic_policy_local(
    #[case] client: Client,
    #[case] dest: &str,
    #[case] port: u16,
    #[case] want: &str,
) {
    let s = state(
        vec![lb_service("Local")],
        two_endpoints(),
        NodePortAddresses::all(),
    );
    let d = desired(&s);
    assert_eq!(resolve(&d, client, dest, port), want, "{d:#?}");
}

// TestExternalTrafficPolicyCluster
#[rstest]
#[case::pod_to_cluster_ip_hits_both_unmasqueraded(Client::Pod, CLUSTER_IP, 80, BOTH)]
#[case::pod_to_external_ip_hits_both_masqueraded(
    Client::Pod,
    EXTERNAL_IP,
    80,
    "198.18.1.1:80, 198.18.2.1:80 masq"
)]
#[case::external_to_external_ip_hits_both_masqueraded(
    Client::External,
    EXTERNAL_IP,
    80,
    "198.18.1.1:80, 198.18.2.1:80 masq"
)]
#[case::pod_to_lb_ip_hits_both_masqueraded(
    Client::Pod,
    LB1,
    80,
    "198.18.1.1:80, 198.18.2.1:80 masq"
)]
#[case::external_to_lb_ip_hits_both_masqueraded(
    Client::External,
    LB1,
    80,
    "198.18.1.1:80, 198.18.2.1:80 masq"
)]
#[case::pod_to_node_port_hits_both_masqueraded(
    Client::Pod,
    NODE_IP,
    3001,
    "198.18.1.1:80, 198.18.2.1:80 masq"
)]
#[case::external_to_node_port_hits_both_masqueraded(
    Client::External,
    NODE_IP,
    3001,
    "198.18.1.1:80, 198.18.2.1:80 masq"
)]
fn external_traffic_policy_cluster(
    #[case] client: Client,
    #[case] dest: &str,
    #[case] port: u16,
    #[case] want: &str,
) {
    let s = state(
        vec![lb_service("Cluster")],
        two_endpoints(),
        NodePortAddresses::all(),
    );
    let d = desired(&s);
    assert_eq!(resolve(&d, client, dest, port), want, "{d:#?}");
}

// TestLoadBalancer (eTP=Cluster, source ranges with a node range and whitespace).
#[rstest]
#[case::pod_to_cluster_ip(Client::Pod, CLUSTER_IP, 80, EP_REMOTE)]
#[case::external_to_node_port(Client::External, NODE_IP, 3001, "198.18.2.1:80 masq")]
#[case::node_port_bypasses_source_ranges(
    Client::ExternalBlocked,
    NODE_IP,
    3001,
    "198.18.2.1:80 masq"
)]
#[case::accepted_external_to_lb1(Client::External, LB1, 80, "198.18.2.1:80 masq")]
#[case::accepted_external_to_lb2(Client::External, LB2, 80, "198.18.2.1:80 masq")]
#[case::blocked_external_to_lb1(Client::ExternalBlocked, LB1, 80, "DROP")]
#[case::blocked_external_to_lb2(Client::ExternalBlocked, LB2, 80, "DROP")]
#[case::pod_to_lb1_blocked_by_source_ranges(Client::Pod, LB1, 80, "DROP")]
#[case::pod_to_lb2_blocked_by_source_ranges(Client::Pod, LB2, 80, "DROP")]
#[case::node_to_lb1_allowed_by_source_ranges(Client::Node, LB1, 80, "198.18.2.1:80 masq")]
#[case::node_to_lb2_allowed_by_source_ranges(Client::Node, LB2, 80, "198.18.2.1:80 masq")]
fn load_balancer_source_ranges(
    #[case] client: Client,
    #[case] dest: &str,
    #[case] port: u16,
    #[case] want: &str,
) {
    let d = desired(&load_balancer_state());
    assert_eq!(resolve(&d, client, dest, port), want, "{d:#?}");
}

fn load_balancer_state() -> ClusterState {
    let svc = svc1(
        json!({
            "type": "LoadBalancer", "clusterIP": CLUSTER_IP,
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
            "loadBalancerSourceRanges": ["198.19.255.0/25", " 198.19.200.0/25"],
        }),
        json!({"loadBalancer": {"ingress": [{"ip": LB1}, {"ip": LB2}]}}),
    );
    state(
        vec![svc],
        json!([{"addresses": ["198.18.2.1"]}]),
        NodePortAddresses::all(),
    )
}

/// "same node to LB, SNATted to LB (implicitly allowed)": a range holds a node address, so
/// the LB IP itself is an allowed source.
#[test]
fn the_node_snatted_to_its_lb_ip_is_allowed() {
    let d = desired(&load_balancer_state());
    for lb in [LB1, LB2] {
        let lb_ip: IpAddr = lb.parse().unwrap();
        let entry = d
            .external
            .iter()
            .find(|f| f.addr == lb_ip)
            .expect("an LB frontend");
        assert!(
            entry.source_ranges.iter().any(|r| r.contains(lb_ip)),
            "{entry:#?}"
        );
        // ...but not the other LB IP.
        let other: IpAddr = if lb == LB1 { LB2 } else { LB1 }.parse().unwrap();
        assert!(!entry.source_ranges.iter().any(|r| r.contains(other)));
    }
}

// TestNodePorts: which node addresses take NodePort traffic.
#[rstest]
#[case::only_the_primary_address(
    "198.19.255.2/32", &[(NODE_IP, BOTH), (NODE_IP_ALT, "")])]
#[case::multiple_nodeport_addresses(
    "198.19.255.0/25,198.19.255.128/25,fd00:ff::/64", &[(NODE_IP, BOTH), (NODE_IP_ALT, BOTH)])]
#[case::default_every_node_address(
    "", &[(NODE_IP, BOTH), (NODE_IP_ALT, BOTH)])]
fn node_ports(#[case] cidrs: &str, #[case] rows: &[(&str, &str)]) {
    let svc = svc1(
        json!({"type": "NodePort", "clusterIP": CLUSTER_IP,
               "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}),
        json!({}),
    );
    let s = state(
        vec![svc],
        two_endpoints(),
        NodePortAddresses::parse(cidrs).expect("valid CIDRs"),
    );
    let d = desired(&s);
    assert_eq!(resolve(&d, Client::Pod, CLUSTER_IP, 80), BOTH);
    for (dest, want) in rows {
        let want_masq = if want.is_empty() {
            String::new()
        } else {
            format!("{want} masq")
        };
        assert_eq!(
            resolve(&d, Client::External, dest, 3001),
            want_masq,
            "external to {dest}"
        );
        assert_eq!(
            resolve(&d, Client::Node, dest, 3001),
            want_masq,
            "node to {dest}"
        );
    }
}

// eTP=Local with no local endpoint: external clients are dropped (not rejected); pods
// still reach the remote endpoint; with no endpoint at all, everyone is rejected.
#[rstest]
#[case::etp_local_no_local_endpoint_drops(json!([{"addresses": ["198.18.2.1"]}]), Client::External, "DROP")]
#[case::etp_local_no_local_endpoint_pod_reaches_remote(json!([{"addresses": ["198.18.2.1"]}]), Client::Pod, EP_REMOTE)]
#[case::etp_local_no_endpoints_rejects(json!([]), Client::External, "REJECT")]
#[case::etp_local_no_endpoints_rejects_pods(json!([]), Client::Pod, "REJECT")]
// KEP-1669: only a terminating (still serving) local endpoint: external traffic uses it.
#[case::etp_local_falls_back_to_local_terminating(
    json!([{"addresses": ["198.18.2.1"]},
           {"addresses": ["198.18.1.1"], "nodeName": NODE,
            "conditions": {"ready": false, "serving": true, "terminating": true}}]),
    Client::External, EP_LOCAL)]
fn etp_local_without_local_endpoints(
    #[case] endpoints: Value,
    #[case] client: Client,
    #[case] want: &str,
) {
    let s = state(
        vec![lb_service("Local")],
        endpoints,
        NodePortAddresses::all(),
    );
    let d = desired(&s);
    assert_eq!(resolve(&d, client, LB1, 80), want, "{d:#?}");
    assert_eq!(resolve(&d, client, NODE_IP, 3001), want, "{d:#?}");
}

// iTP=Local on a ClusterIP Service: only local endpoints; none local -> drop.
#[rstest]
#[case::local_endpoint_only(two_endpoints(), EP_LOCAL)]
#[case::no_local_endpoint_drops(json!([{"addresses": ["198.18.2.1"]}]), "DROP")]
#[case::no_endpoint_rejects(json!([]), "REJECT")]
fn itp_local_cluster_ip(#[case] endpoints: Value, #[case] want: &str) {
    let svc = svc1(
        json!({"clusterIP": CLUSTER_IP, "internalTrafficPolicy": "Local",
               "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}),
        json!({}),
    );
    let d = desired(&state(vec![svc], endpoints, NodePortAddresses::all()));
    assert_eq!(resolve(&d, Client::Pod, CLUSTER_IP, 80), want, "{d:#?}");
}

#[test]
fn health_check_node_port_counts_local_ready_endpoints_of_an_etp_local_load_balancer() {
    let s = state(
        vec![lb_service("Local")],
        two_endpoints(),
        NodePortAddresses::all(),
    );
    let hc = desired(&s).health_check.expect("a health check");
    assert_eq!((hc.port, hc.local_endpoints), (30000, 1));
    // eTP=Cluster: none, even with the field set (kube-proxy's NeedsHealthCheck).
    let s = state(
        vec![lb_service("Cluster")],
        two_endpoints(),
        NodePortAddresses::all(),
    );
    assert_eq!(desired(&s).health_check, None);
    // No local endpoint: open, with 0.
    let s = state(
        vec![lb_service("Local")],
        json!([{"addresses": ["198.18.2.1"]}]),
        NodePortAddresses::all(),
    );
    assert_eq!(desired(&s).health_check.map(|h| h.local_endpoints), Some(0));
}

#[test]
fn frontend_kinds_scopes_and_policies_of_an_etp_local_load_balancer() {
    let s = state(
        vec![lb_service("Local")],
        two_endpoints(),
        NodePortAddresses::all(),
    );
    let d = desired(&s);
    let mut rows: Vec<(FrontendKind, String, u16, Scope, TrafficPolicy, Snat)> = d
        .external
        .iter()
        .map(|f| {
            (
                f.kind,
                f.addr.to_string(),
                f.port,
                f.scope,
                f.policy,
                f.snat,
            )
        })
        .collect();
    rows.sort();
    let mut want = Vec::new();
    for (kind, addr, port) in [
        (FrontendKind::NodePort, NODE_IP, 3001),
        (FrontendKind::NodePort, NODE_IP_ALT, 3001),
        (FrontendKind::ExternalIp, EXTERNAL_IP, 80),
        (FrontendKind::LoadBalancer, LB1, 80),
    ] {
        want.push((
            kind,
            addr.to_string(),
            port,
            Scope::External,
            TrafficPolicy::Local,
            Snat::Never,
        ));
        want.push((
            kind,
            addr.to_string(),
            port,
            Scope::Internal,
            TrafficPolicy::Local,
            Snat::FromNode,
        ));
    }
    want.sort();
    assert_eq!(rows, want);
}

#[rstest]
// ipMode Proxy ingresses are the load balancer's business.
#[case::ip_mode_proxy_skipped(json!({"loadBalancer": {"ingress": [{"ip": LB1, "ipMode": "Proxy"}, {"ip": LB2, "ipMode": "VIP"}]}}), &[LB2], &[])]
#[case::hostname_only_ingress(json!({"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}), &[], &[])]
#[case::bad_ingress_ip(json!({"loadBalancer": {"ingress": [{"ip": "198.19.200.300"}, {"ip": LB1}]}}), &[LB1], &[reason::INVALID_IP])]
#[case::other_family_ingress(json!({"loadBalancer": {"ingress": [{"ip": "fd00:c8::200"}, {"ip": LB1}]}}), &[LB1], &[])]
fn lb_ingress_ips(#[case] status: Value, #[case] want: &[&str], #[case] skips: &[&str]) {
    let svc = svc1(
        json!({"type": "LoadBalancer", "clusterIP": CLUSTER_IP,
               "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}),
        status,
    );
    let d = desired(&state(vec![svc], two_endpoints(), NodePortAddresses::all()));
    let lbs: Vec<String> = d
        .external
        .iter()
        .filter(|f| f.kind == FrontendKind::LoadBalancer)
        .map(|f| f.addr.to_string())
        .collect();
    assert_eq!(lbs, want);
    let reasons: Vec<&str> = d.skipped.iter().map(|s| s.reason).collect();
    assert_eq!(reasons, skips);
}

#[test]
fn malformed_source_ranges_and_external_ips_are_skipped_not_fatal() {
    let svc = svc1(
        json!({"type": "LoadBalancer", "clusterIP": CLUSTER_IP,
               "externalIPs": ["198.19.200.999", EXTERNAL_IP],
               "loadBalancerSourceRanges": ["198.19.200.0/33", "nonsense", "198.19.200.0/25"],
               "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}),
        json!({"loadBalancer": {"ingress": [{"ip": LB1}]}}),
    );
    let d = desired(&state(vec![svc], two_endpoints(), NodePortAddresses::all()));
    let reasons: Vec<&str> = d.skipped.iter().map(|s| s.reason).collect();
    assert_eq!(
        reasons,
        [
            reason::INVALID_IP,
            reason::INVALID_SOURCE_RANGE,
            reason::INVALID_SOURCE_RANGE
        ]
    );
    assert_eq!(
        resolve(&d, Client::External, LB1, 80),
        BOTH.to_string() + " masq"
    );
    assert_eq!(resolve(&d, Client::ExternalBlocked, LB1, 80), "DROP");
    assert_eq!(
        resolve(&d, Client::External, EXTERNAL_IP, 80),
        BOTH.to_string() + " masq"
    );
}

#[test]
fn nodeport_addresses_never_default_to_loopback() {
    let all = NodePortAddresses::all();
    let ips: Vec<IpAddr> = ["127.0.0.1", "::1", NODE_IP]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(all.select(&ips), vec![NODE_IP.parse::<IpAddr>().unwrap()]);
    let asked = NodePortAddresses::parse("127.0.0.0/8").unwrap();
    assert_eq!(
        asked.select(&ips),
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );
    assert!(NodePortAddresses::parse("198.19.255.0/24,bogus").is_err());
}

/// Without a Node object (a manifests folder may hold none), the external interfaces'
/// addresses take NodePorts; a change of them recomputes the Services.
#[test]
fn interface_addresses_take_node_ports_too() {
    let mut s = ClusterState::new(Some(NODE.into()));
    s.apply_service(Event::<Service>::Init);
    let svc: Service = serde_json::from_value(svc1(
        json!({"type": "NodePort", "clusterIP": CLUSTER_IP,
               "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}]}),
        json!({}),
    ))
    .expect("test Service");
    s.apply_service(Event::InitApply(svc));
    s.apply_service(Event::<Service>::InitDone);
    s.take_dirty();
    let addrs = ["127.0.0.1", NODE_IP, "fd00:ff::2"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    s.set_interface_addresses(addrs);
    assert_eq!(s.take_dirty().len(), 1, "the Service is recomputed");
    let nodeports: Vec<String> = desired(&s)
        .external
        .iter()
        .map(|f| format!("{}:{}", f.addr, f.port))
        .collect();
    assert_eq!(nodeports, [format!("{NODE_IP}:3001")]);
}
