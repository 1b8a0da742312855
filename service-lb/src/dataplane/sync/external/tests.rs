//! North-south frontends from Service objects to map entries (fake store), checked by
//! reading the maps the way the programs do: an external client uses the External-scope
//! master; a pod uses the Internal-scope master when the External one has
//! `SVC_FLAG_TWO_SCOPES`; `SVC_FLAG_SOURCE_RANGES` makes the source-range trie decide
//! first (a miss drops); count 0 drops with `SVC_FLAG_DROP_NO_ENDPOINT`, else rejects;
//! `SVC_FLAG_SNAT` masquerades.
//!
//! The expected rows are kube-proxy's (pkg/proxy/nftables proxier_test.go,
//! `TestExternalTrafficPolicyLocal`, `TestExternalTrafficPolicyCluster`, `TestLoadBalancer`)
//! with its addresses mapped onto the test ranges as in `model/north_south_tests.rs`. The
//! node's own connections are left out: they are the socket LB's (the map entry of an
//! eTP=Local Internal twin sets no SNAT flag, see the module documentation).

use std::net::IpAddr;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;
use rstest::rstest;
use serde_json::{json, Value};
use service_lb_common::{
    names::{KIND_CLUSTER_IP, KIND_LOAD_BALANCER, KIND_NODE_PORT},
    service::{
        SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_CLUSTER_IP, SVC_FLAG_DROP_NO_ENDPOINT,
        SVC_FLAG_EXTERNAL_IP, SVC_FLAG_LOAD_BALANCER, SVC_FLAG_NODE_PORT, SVC_FLAG_SNAT,
        SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES,
    },
};

use crate::{
    dataplane::{fake_maps::Op, vips::Cidr, FakeMaps, MapStore, ServiceWriter, SvcKey, Syncer},
    model::{ClusterState, NodePortAddresses, ServiceDesired, ServiceName},
};

const NODE: &str = "test-node";
const POD: &str = "198.18.1.2";
const NODE_IP: &str = "198.19.255.2";
const EXTERNAL: &str = "198.19.200.2";
const EXTERNAL_BLOCKED: &str = "198.19.200.130";
const CLUSTER_IP: &str = "198.19.0.41";
const EXTERNAL_IP: &str = "198.19.200.11";
const LB1: &str = "198.19.200.200";
const LB2: &str = "198.19.200.201";
const EP_REMOTE: &str = "198.18.2.1:80";
const EP_LOCAL: &str = "198.18.1.1:80";
const BOTH: &str = "198.18.1.1:80, 198.18.2.1:80";
const BOTH_MASQ: &str = "198.18.1.1:80, 198.18.2.1:80 masq";

#[derive(Clone, Copy, Debug)]
enum Client {
    Pod,
    External,
    ExternalBlocked,
}

impl Client {
    fn addr(self) -> IpAddr {
        match self {
            Client::Pod => POD,
            Client::External => EXTERNAL,
            Client::ExternalBlocked => EXTERNAL_BLOCKED,
        }
        .parse()
        .expect("test address")
    }
}

fn svc1(spec: Value, status: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "svc1", "namespace": "ns1"},
        "spec": spec,
        "status": status,
    }))
    .expect("test Service")
}

fn slice(endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": "svc1-abc", "namespace": "ns1",
                     "labels": {"kubernetes.io/service-name": "svc1"}},
        "addressType": "IPv4",
        "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("test EndpointSlice")
}

fn state(service: Service, endpoints: Value) -> ClusterState {
    let mut state = ClusterState::new(Some(NODE.into()));
    state.set_nodeport_addresses(NodePortAddresses::all());
    state.apply_node(Event::<Node>::Init);
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
    }))
    .expect("test Node");
    state.apply_node(Event::InitApply(node));
    state.apply_node(Event::<Node>::InitDone);
    state.apply_service(Event::<Service>::Init);
    state.apply_service(Event::InitApply(service));
    state.apply_service(Event::<Service>::InitDone);
    state.apply_endpoint_slice(Event::<EndpointSlice>::Init);
    state.apply_endpoint_slice(Event::InitApply(slice(endpoints)));
    state.apply_endpoint_slice(Event::<EndpointSlice>::InitDone);
    state
}

fn name() -> ServiceName {
    ServiceName {
        namespace: "ns1".into(),
        name: "svc1".into(),
    }
}

fn desired(state: &ClusterState) -> ServiceDesired {
    state.desired(&name())
}

fn synced(state: &ClusterState) -> Syncer<FakeMaps> {
    let mut syncer = Syncer::new(ServiceWriter::open(FakeMaps::new()).expect("opens"));
    let report = syncer.full_sync(&[desired(state)]);
    assert!(
        report.failed.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
    syncer
}

/// What a new TCP flow from `client` to `dest:port` gets, read from the maps as the
/// programs read them: "a:p, b:p" (sorted) with " masq" when SNATed, "DROP", "REJECT",
/// or "" when no frontend matches (passed on, not ours).
fn resolve(maps: &FakeMaps, client: Client, dest: &str, port: u16) -> String {
    let dest: IpAddr = dest.parse().expect("test address");
    let key = |scope, slot| SvcKey::new(dest, port, 6, scope, slot);
    let Some(mut master) = maps.get_service(&key(SCOPE_EXTERNAL, 0)).expect("reads") else {
        return String::new();
    };
    let mut scope = SCOPE_EXTERNAL;
    if master.flags & SVC_FLAG_TWO_SCOPES != 0 && matches!(client, Client::Pod) {
        scope = SCOPE_INTERNAL;
        master = maps
            .get_service(&key(scope, 0))
            .expect("reads")
            .expect("a two-scope frontend has its internal twin");
    }
    if master.flags & SVC_FLAG_SOURCE_RANGES != 0 {
        let allowed = maps
            .source_ranges
            .iter()
            .any(|(id, cidr)| *id == master.service_id && cidr.contains(&client.addr()));
        if !allowed {
            return "DROP".into();
        }
    }
    if master.count == 0 {
        return if master.flags & SVC_FLAG_DROP_NO_ENDPOINT != 0 {
            "DROP".into()
        } else {
            "REJECT".into()
        };
    }
    let mut addrs: Vec<String> = (1..=master.count as u16)
        .map(|slot| {
            let s = maps
                .get_service(&key(scope, slot))
                .expect("reads")
                .expect("slot");
            let b = maps
                .get_backend(crate::dataplane::Family::of(&dest), s.backend_id)
                .expect("reads")
                .expect("backend");
            std::net::SocketAddr::new(b.addr(), b.port()).to_string()
        })
        .collect();
    addrs.sort();
    let list = addrs.join(", ");
    if master.flags & SVC_FLAG_SNAT != 0 {
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

fn lb_service(etp: &str) -> Service {
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

// TestExternalTrafficPolicyLocal, from the maps.
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
#[case::nothing_on_another_port(Client::External, NODE_IP, 3002, "")]
fn external_traffic_policy_local(
    #[case] client: Client,
    #[case] dest: &str,
    #[case] port: u16,
    #[case] want: &str,
) {
    let syncer = synced(&state(lb_service("Local"), two_endpoints()));
    let maps = syncer.writer().store();
    assert_eq!(resolve(maps, client, dest, port), want, "{maps:#?}");
}

// TestExternalTrafficPolicyCluster, from the maps.
#[rstest]
#[case::pod_to_cluster_ip_hits_both_unmasqueraded(Client::Pod, CLUSTER_IP, 80, BOTH)]
#[case::pod_to_external_ip_hits_both_masqueraded(Client::Pod, EXTERNAL_IP, 80, BOTH_MASQ)]
#[case::external_to_external_ip_hits_both_masqueraded(Client::External, EXTERNAL_IP, 80, BOTH_MASQ)]
#[case::pod_to_lb_ip_hits_both_masqueraded(Client::Pod, LB1, 80, BOTH_MASQ)]
#[case::external_to_lb_ip_hits_both_masqueraded(Client::External, LB1, 80, BOTH_MASQ)]
#[case::pod_to_node_port_hits_both_masqueraded(Client::Pod, NODE_IP, 3001, BOTH_MASQ)]
#[case::external_to_node_port_hits_both_masqueraded(Client::External, NODE_IP, 3001, BOTH_MASQ)]
fn external_traffic_policy_cluster(
    #[case] client: Client,
    #[case] dest: &str,
    #[case] port: u16,
    #[case] want: &str,
) {
    let syncer = synced(&state(lb_service("Cluster"), two_endpoints()));
    let maps = syncer.writer().store();
    assert_eq!(resolve(maps, client, dest, port), want, "{maps:#?}");
}

fn source_ranges_service(ranges: Value) -> Service {
    svc1(
        json!({
            "type": "LoadBalancer", "clusterIP": CLUSTER_IP,
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
            "loadBalancerSourceRanges": ranges,
        }),
        json!({"loadBalancer": {"ingress": [{"ip": LB1}, {"ip": LB2}]}}),
    )
}

// TestLoadBalancer, from the maps (eTP=Cluster, source ranges with a node range).
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
fn load_balancer_source_ranges(
    #[case] client: Client,
    #[case] dest: &str,
    #[case] port: u16,
    #[case] want: &str,
) {
    let svc = source_ranges_service(json!(["198.19.255.0/25", " 198.19.200.0/25"]));
    let syncer = synced(&state(svc, json!([{"addresses": ["198.18.2.1"]}])));
    let maps = syncer.writer().store();
    assert_eq!(resolve(maps, client, dest, port), want, "{maps:#?}");
}

/// The master flags of every frontend kind, and the names map's kind for each.
#[test]
fn flags_and_names_of_each_frontend_kind() {
    let syncer = synced(&state(lb_service("Cluster"), two_endpoints()));
    let maps = syncer.writer().store();
    let master = |addr: &str, port: u16| {
        maps.get_service(&SvcKey::new(
            addr.parse().unwrap(),
            port,
            6,
            SCOPE_EXTERNAL,
            0,
        ))
        .unwrap()
        .unwrap_or_else(|| panic!("no master for {addr}:{port}"))
    };
    let cases = [
        (CLUSTER_IP, 80, SVC_FLAG_CLUSTER_IP, KIND_CLUSTER_IP),
        (
            NODE_IP,
            3001,
            SVC_FLAG_NODE_PORT | SVC_FLAG_SNAT,
            KIND_NODE_PORT,
        ),
        (
            EXTERNAL_IP,
            80,
            SVC_FLAG_EXTERNAL_IP | SVC_FLAG_SNAT,
            service_lb_common::names::KIND_EXTERNAL_IP,
        ),
        (
            LB1,
            80,
            SVC_FLAG_LOAD_BALANCER | SVC_FLAG_SNAT,
            KIND_LOAD_BALANCER,
        ),
    ];
    for (addr, port, flags, kind) in cases {
        let m = master(addr, port);
        assert_eq!(m.flags, flags, "{addr}:{port}");
        let n = maps.names.get(&m.service_id).expect("named");
        assert_eq!(
            (n.namespace(), n.name(), n.port_name(), n.kind),
            ("ns1", "svc1", "p80", kind)
        );
    }
    // Only the four frontends (one scope each: eTP=Cluster), and no source range.
    assert_eq!(maps.services.keys().filter(|k| k.slot() == 0).count(), 4);
    assert!(maps.source_ranges.is_empty());
}

/// eTP=Local: two entries per north-south frontend, both flagged TWO_SCOPES; the external
/// one without SNAT, and DROP_NO_ENDPOINT when this node has no endpoint.
#[test]
fn etp_local_twins_and_the_no_local_endpoint_drop() {
    let remote_only = json!([{"addresses": ["198.18.2.1"]}]);
    let syncer = synced(&state(lb_service("Local"), remote_only));
    let maps = syncer.writer().store();
    let get = |scope| {
        maps.get_service(&SvcKey::new(NODE_IP.parse().unwrap(), 3001, 6, scope, 0))
            .unwrap()
            .expect("master")
    };
    let ext = get(SCOPE_EXTERNAL);
    assert_eq!(
        ext.flags,
        SVC_FLAG_NODE_PORT | SVC_FLAG_TWO_SCOPES | SVC_FLAG_DROP_NO_ENDPOINT
    );
    assert_eq!(ext.count, 0);
    let int = get(SCOPE_INTERNAL);
    assert_eq!(int.flags, SVC_FLAG_NODE_PORT | SVC_FLAG_TWO_SCOPES);
    assert_eq!(int.count, 1);
    assert_ne!(ext.service_id, int.service_id);
    assert_eq!(resolve(maps, Client::External, NODE_IP, 3001), "DROP");
    assert_eq!(resolve(maps, Client::Pod, NODE_IP, 3001), EP_REMOTE);
    // No endpoint at all: both refuse (kube-proxy's REJECT).
    let syncer = synced(&state(lb_service("Local"), json!([])));
    assert_eq!(
        resolve(syncer.writer().store(), Client::External, NODE_IP, 3001),
        "REJECT"
    );
}

/// iTP=Local with only remote endpoints: the ClusterIP frontend drops (kube-proxy), it
/// does not refuse.
#[test]
fn itp_local_with_only_remote_endpoints_drops() {
    let svc = svc1(
        json!({"clusterIP": CLUSTER_IP, "internalTrafficPolicy": "Local",
               "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}),
        json!({}),
    );
    let syncer = synced(&state(svc, json!([{"addresses": ["198.18.2.1"]}])));
    let maps = syncer.writer().store();
    let m = maps
        .get_service(&SvcKey::new(
            CLUSTER_IP.parse().unwrap(),
            80,
            6,
            SCOPE_EXTERNAL,
            0,
        ))
        .unwrap()
        .expect("master");
    assert_eq!(m.flags, SVC_FLAG_CLUSTER_IP | SVC_FLAG_DROP_NO_ENDPOINT);
    assert_eq!(resolve(maps, Client::Pod, CLUSTER_IP, 80), "DROP");
}

fn apply(syncer: &mut Syncer<FakeMaps>, state: &ClusterState) {
    let report = syncer.apply(&[desired(state)]);
    assert!(
        report.failed.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
}

fn lb1_master(maps: &FakeMaps) -> service_lb_common::SvcValue {
    maps.get_service(&SvcKey::new(LB1.parse().unwrap(), 80, 6, SCOPE_EXTERNAL, 0))
        .unwrap()
        .expect("LB1 master")
}

fn cidr(text: &str) -> Cidr {
    let (a, l) = text.split_once('/').unwrap();
    Cidr::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

/// Ranges are written before the master that turns the check on, stale ranges deleted
/// after the master, and all of them after the master no longer has the flag.
#[test]
fn source_ranges_are_added_before_and_removed_after_the_master() {
    let ep = || json!([{"addresses": ["198.18.2.1"]}]);
    let mut syncer = synced(&state(source_ranges_service(json!([])), ep()));
    let id = lb1_master(syncer.writer().store()).service_id;
    assert_eq!(
        lb1_master(syncer.writer().store()).flags & SVC_FLAG_SOURCE_RANGES,
        0
    );
    let ops_of_lb1 = |syncer: &mut Syncer<FakeMaps>| -> Vec<Op> {
        let ops = syncer.writer_mut().store_mut().take_ops();
        // The LB1 frontend's own master write and its ranges (LB2 has another id).
        ops.into_iter()
            .filter(|op| match op {
                Op::PutRange { service_id, .. } | Op::DeleteRange { service_id, .. } => {
                    *service_id == id
                }
                Op::PutMaster { .. } | Op::DeleteMaster => true,
                _ => false,
            })
            .collect()
    };
    syncer.writer_mut().store_mut().take_ops();

    // Ranges appear: ranges first, then the masters (LB1's among them).
    apply(
        &mut syncer,
        &state(source_ranges_service(json!(["198.19.200.0/25"])), ep()),
    );
    let ops = ops_of_lb1(&mut syncer);
    let first_master = ops
        .iter()
        .position(|op| matches!(op, Op::PutMaster { .. }))
        .expect("a master written");
    let put = ops
        .iter()
        .position(|op| matches!(op, Op::PutRange { cidr: c, .. } if *c == cidr("198.19.200.0/25")))
        .expect("the range written");
    assert!(put < first_master, "{ops:?}");
    let m = lb1_master(syncer.writer().store());
    assert_ne!(m.flags & SVC_FLAG_SOURCE_RANGES, 0);
    assert_eq!(m.service_id, id, "the frontend keeps its id");

    // A range is swapped: the new one is written, the master is unchanged, the old one goes.
    apply(
        &mut syncer,
        &state(source_ranges_service(json!(["198.19.200.0/26"])), ep()),
    );
    let ops = ops_of_lb1(&mut syncer);
    assert_eq!(
        ops,
        vec![
            Op::PutRange {
                service_id: id,
                cidr: cidr("198.19.200.0/26")
            },
            Op::DeleteRange {
                service_id: id,
                cidr: cidr("198.19.200.0/25")
            },
        ]
    );

    // The ranges go: LB1's master loses the flag first, then its range is deleted.
    apply(&mut syncer, &state(source_ranges_service(json!([])), ep()));
    let ops = ops_of_lb1(&mut syncer);
    let lb1_master_put = ops
        .iter()
        .position(|op| matches!(op, Op::PutMaster { .. }))
        .expect("masters written");
    let deleted = ops
        .iter()
        .position(|op| matches!(op, Op::DeleteRange { .. }))
        .expect("the range deleted");
    assert!(lb1_master_put < deleted, "{ops:?}");
    assert_eq!(
        lb1_master(syncer.writer().store()).flags & SVC_FLAG_SOURCE_RANGES,
        0
    );
    assert!(syncer.writer().store().source_ranges.is_empty());
}

/// A Service that goes from LoadBalancer (eTP=Local, source ranges) to ClusterIP loses
/// every north-south entry: masters, slots, ranges and names; the ClusterIP stays.
#[test]
fn switching_to_cluster_ip_removes_the_external_frontends() {
    let ep = two_endpoints;
    let mut lb = lb_service("Local");
    if let Some(spec) = lb.spec.as_mut() {
        spec.load_balancer_source_ranges = Some(vec!["198.19.200.0/25".into()]);
    }
    let mut syncer = synced(&state(lb, ep()));
    let before = syncer
        .writer()
        .store()
        .services
        .keys()
        .filter(|k| k.slot() == 0)
        .count();
    // ClusterIP + (NodePort, externalIP, LB) x 2 scopes.
    assert_eq!(before, 7);
    assert!(!syncer.writer().store().source_ranges.is_empty());

    let cluster_ip = svc1(
        json!({"type": "ClusterIP", "clusterIP": CLUSTER_IP,
               "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}),
        json!({}),
    );
    apply(&mut syncer, &state(cluster_ip, ep()));
    let maps = syncer.writer().store();
    let masters: Vec<IpAddr> = maps
        .services
        .keys()
        .filter(|k| k.slot() == 0)
        .map(|k| k.addr())
        .collect();
    assert_eq!(masters, vec![CLUSTER_IP.parse::<IpAddr>().unwrap()]);
    assert!(
        maps.services
            .keys()
            .all(|k| k.addr() == CLUSTER_IP.parse::<IpAddr>().unwrap()),
        "no slot of a removed frontend is left"
    );
    assert!(maps.source_ranges.is_empty());
    assert_eq!(maps.names.len(), 1);
    assert!(maps.names.values().all(|n| n.kind == KIND_CLUSTER_IP));
}

/// eTP Cluster -> Local: the internal twin is written before the external master that
/// sends pods to it; Local -> Cluster: the external master stops doing so before the
/// twin is deleted. In between a pod never finds TWO_SCOPES without the twin.
#[test]
fn the_internal_twin_exists_whenever_the_external_master_points_to_it() {
    let node_port = |scope| SvcKey::new(NODE_IP.parse().unwrap(), 3001, 6, scope, 0);
    let mut syncer = synced(&state(lb_service("Cluster"), two_endpoints()));
    check_twins_in_order(&mut syncer, &state(lb_service("Local"), two_endpoints()));
    assert!(syncer
        .writer()
        .store()
        .services
        .contains_key(&node_port(SCOPE_INTERNAL)));
    check_twins_in_order(&mut syncer, &state(lb_service("Cluster"), two_endpoints()));
    assert!(!syncer
        .writer()
        .store()
        .services
        .contains_key(&node_port(SCOPE_INTERNAL)));
}

/// Applies `next` and checks the order of the master writes in the op log: new Internal
/// twins (count 2: every endpoint) are written before any External master changes (to
/// count 1, the local endpoint, with TWO_SCOPES); Internal twins that go are deleted after
/// every External master was rewritten without TWO_SCOPES.
fn check_twins_in_order(syncer: &mut Syncer<FakeMaps>, next: &ClusterState) {
    let before = syncer.writer().store().clone();
    syncer.writer_mut().store_mut().take_ops();
    apply(syncer, next);
    let after = syncer.writer().store().clone();
    let ops = syncer.writer_mut().store_mut().take_ops();
    let masters: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op, Op::PutMaster { .. } | Op::DeleteMaster))
        .collect();
    let internal_before = before
        .services
        .keys()
        .any(|k| k.slot() == 0 && k.scope() == SCOPE_INTERNAL);
    let internal_after = after
        .services
        .keys()
        .any(|k| k.slot() == 0 && k.scope() == SCOPE_INTERNAL);
    if !internal_before && internal_after {
        // Adding twins: the three Internal masters (NodePort, externalIP, LB) are the first
        // master writes, before any External master changes.
        assert!(
            masters
                .iter()
                .take(3)
                .all(|op| matches!(op, Op::PutMaster { count: 2 })),
            "{ops:?}"
        );
        assert!(!masters[..3].iter().any(|op| matches!(op, Op::DeleteMaster)));
    }
    if internal_before && !internal_after {
        // Removing twins: the three Internal masters are the last master ops.
        let n = masters.len();
        assert!(n >= 3, "{ops:?}");
        assert!(
            masters[n - 3..]
                .iter()
                .all(|op| matches!(op, Op::DeleteMaster)),
            "{ops:?}"
        );
        assert!(
            !masters[..n - 3]
                .iter()
                .any(|op| matches!(op, Op::DeleteMaster)),
            "{ops:?}"
        );
    }
}
