//! The model's rules, one table per concern: Service frontends, endpoint selection, the
//! watch contract, dirty tracking and relists.

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;
use rstest::rstest;
use serde_json::{json, Value};

use super::{reason, ClusterState, DesiredBackend, Protocol, ServiceDesired, ServiceName};

const NODE: &str = "n1";

fn svc_name(name: &str) -> ServiceName {
    ServiceName {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn service(name: &str, spec: Value) -> Service {
    service_with_labels(name, json!({}), spec)
}

fn service_with_labels(name: &str, labels: Value, spec: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": spec,
    }))
    .expect("test Service")
}

/// A slice of `service` with `endpoints` and one port per (name, port, protocol).
fn slice(
    name: &str,
    service: &str,
    address_type: &str,
    ports: Value,
    endpoints: Value,
) -> EndpointSlice {
    slice_with(
        name,
        json!({"kubernetes.io/service-name": service}),
        address_type,
        ports,
        endpoints,
    )
}

fn slice_with(
    name: &str,
    labels: Value,
    address_type: &str,
    ports: Value,
    endpoints: Value,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("test EndpointSlice")
}

fn state_with(services: Vec<Service>, slices: Vec<EndpointSlice>) -> ClusterState {
    let mut state = ClusterState::new(Some(NODE.into()));
    state.apply_service(Event::<Service>::Init);
    for s in services {
        state.apply_service(Event::InitApply(s));
    }
    state.apply_service(Event::<Service>::InitDone);
    state.apply_endpoint_slice(Event::<EndpointSlice>::Init);
    for s in slices {
        state.apply_endpoint_slice(Event::InitApply(s));
    }
    state.apply_endpoint_slice(Event::<EndpointSlice>::InitDone);
    state
}

/// `addr:port/proto` of each frontend.
fn frontends(desired: &ServiceDesired) -> Vec<String> {
    desired
        .frontends
        .iter()
        .map(|f| {
            let proto = match f.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            format!("{}/{proto}", std::net::SocketAddr::new(f.addr, f.port))
        })
        .collect()
}

fn reasons(desired: &ServiceDesired) -> Vec<&'static str> {
    desired.skipped.iter().map(|s| s.reason).collect()
}

// ---------------------------------------------------------------------------------------
// Service -> frontends

#[rstest]
#[case::default_tcp(json!({"clusterIP": "198.19.0.10", "ports": [{"port": 80}]}), &["198.19.0.10:80/tcp"], &[])]
#[case::udp_and_tcp(
    json!({"clusterIP": "198.19.0.53", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}),
    &["198.19.0.53:53/tcp", "198.19.0.53:53/udp"], &[])]
#[case::sctp_skipped(
    json!({"clusterIP": "198.19.0.10", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 9, "protocol": "SCTP"}]}),
    &["198.19.0.10:80/tcp"], &[reason::UNSUPPORTED_PROTOCOL])]
#[case::unknown_protocol(json!({"clusterIP": "198.19.0.10", "ports": [{"port": 80, "protocol": "QUIC"}]}), &[], &[reason::UNSUPPORTED_PROTOCOL])]
#[case::headless(json!({"clusterIP": "None", "ports": [{"port": 80}]}), &[], &[])]
#[case::headless_cluster_ips(json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}), &[], &[])]
#[case::external_name(json!({"type": "ExternalName", "externalName": "example.org", "clusterIP": "198.19.0.10", "ports": [{"port": 80}]}), &[], &[])]
#[case::not_allocated(json!({"ports": [{"port": 80}]}), &[], &[])]
#[case::dual_stack(
    json!({"clusterIP": "198.19.0.10", "clusterIPs": ["198.19.0.10", "fd00:19::10"], "ports": [{"port": 80}]}),
    &["198.19.0.10:80/tcp", "[fd00:19::10]:80/tcp"], &[])]
#[case::cluster_ips_win_over_cluster_ip(
    json!({"clusterIP": "198.19.0.99", "clusterIPs": ["fd00:19::10"], "ports": [{"port": 80}]}),
    &["[fd00:19::10]:80/tcp"], &[])]
#[case::invalid_ip(
    json!({"clusterIPs": ["198.19.0.300", "fd00:19::10"], "ports": [{"port": 80}]}),
    &["[fd00:19::10]:80/tcp"], &[reason::INVALID_IP])]
#[case::second_ip_of_a_family(
    json!({"clusterIPs": ["198.19.0.10", "198.19.0.11"], "ports": [{"port": 80}]}),
    &["198.19.0.10:80/tcp"], &[reason::INVALID_IP])]
#[case::port_zero(json!({"clusterIP": "198.19.0.10", "ports": [{"name": "a", "port": 0}, {"name": "b", "port": 81}]}), &["198.19.0.10:81/tcp"], &[reason::INVALID_PORT])]
#[case::port_too_big(json!({"clusterIP": "198.19.0.10", "ports": [{"port": 70000}]}), &[], &[reason::INVALID_PORT])]
#[case::negative_port(json!({"clusterIP": "198.19.0.10", "ports": [{"port": -1}]}), &[], &[reason::INVALID_PORT])]
#[case::duplicate_port(
    json!({"clusterIP": "198.19.0.10", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}),
    &["198.19.0.10:80/tcp"], &[reason::DUPLICATE_PORT])]
#[case::no_ports(json!({"clusterIP": "198.19.0.10"}), &[], &[])]
fn service_frontends(#[case] spec: Value, #[case] expected: &[&str], #[case] skips: &[&str]) {
    let state = state_with(vec![service("web", spec)], vec![]);
    let desired = state.desired(&svc_name("web"));
    assert_eq!(frontends(&desired), expected, "{desired:#?}");
    assert_eq!(reasons(&desired), skips, "{desired:#?}");
    assert!(desired.frontends.iter().all(|f| f.backends.is_empty()));
}

#[rstest]
#[case::none(json!({}), 0, &[])]
#[case::client_ip_default(json!({"sessionAffinity": "ClientIP"}), 10800, &[])]
#[case::client_ip_configured(json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}), 60, &[])]
#[case::client_ip_too_long(json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}), 10800, &[reason::INVALID_AFFINITY_TIMEOUT])]
#[case::config_without_client_ip_affinity(json!({"sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}), 0, &[])]
fn session_affinity(#[case] extra: Value, #[case] timeout: u32, #[case] skips: &[&str]) {
    let mut spec = json!({"clusterIP": "198.19.0.10", "ports": [{"port": 80}]});
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    let desired = state_with(vec![service("web", spec)], vec![]).desired(&svc_name("web"));
    assert_eq!(desired.frontends[0].affinity_timeout_s, timeout);
    assert_eq!(reasons(&desired), skips);
}

// ---------------------------------------------------------------------------------------
// EndpointSlices -> backends

fn backend(addr: &str, terminating: bool, local: bool) -> DesiredBackend {
    DesiredBackend {
        addr: addr.parse().expect("test address"),
        terminating,
        local,
    }
}

fn ep(addr: &str, conditions: Value) -> Value {
    json!({"addresses": [addr], "conditions": conditions})
}

fn http_service() -> Service {
    service(
        "web",
        json!({"clusterIPs": ["198.19.0.10", "fd00:19::10"], "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}),
    )
}

/// Backends of the IPv4 frontend of `http_service` given its slices.
fn v4_backends(slices: Vec<EndpointSlice>) -> (Vec<DesiredBackend>, Vec<&'static str>) {
    let desired = state_with(vec![http_service()], slices).desired(&svc_name("web"));
    let v4 = desired
        .frontends
        .iter()
        .find(|f| f.addr.is_ipv4())
        .expect("an IPv4 frontend");
    (v4.backends.clone(), reasons(&desired))
}

fn http_port() -> Value {
    json!([{"name": "http", "port": 8080}])
}

#[rstest]
#[case::ready_only(
    json!([ep("198.18.1.3", json!({"ready": true})), ep("198.18.1.2", json!({"ready": false, "serving": false})), ep("198.18.1.4", json!({"ready": false, "serving": true, "terminating": true}))]),
    vec![backend("198.18.1.3:8080", false, false)])]
#[case::nil_ready_is_ready(json!([{"addresses": ["198.18.1.2"]}, ep("198.18.1.3", json!({}))]),
    vec![backend("198.18.1.2:8080", false, false), backend("198.18.1.3:8080", false, false)])]
#[case::terminating_fallback(
    json!([ep("198.18.1.2", json!({"ready": false, "serving": true, "terminating": true})),
           ep("198.18.1.3", json!({"ready": false, "serving": false, "terminating": true})),
           ep("198.18.1.4", json!({"ready": false, "serving": true, "terminating": false}))]),
    vec![backend("198.18.1.2:8080", true, false)])]
#[case::nil_serving_terminating_counts_as_serving(
    json!([ep("198.18.1.2", json!({"ready": false, "terminating": true}))]),
    vec![backend("198.18.1.2:8080", true, false)])]
#[case::nothing_usable(json!([ep("198.18.1.2", json!({"ready": false, "serving": false, "terminating": true}))]), vec![])]
#[case::first_address_only(json!([{"addresses": ["198.18.1.2", "198.18.1.9"]}]), vec![backend("198.18.1.2:8080", false, false)])]
#[case::local(json!([{"addresses": ["198.18.1.2"], "nodeName": NODE}, {"addresses": ["198.18.2.2"], "nodeName": "n2"}]),
    vec![backend("198.18.1.2:8080", false, true), backend("198.18.2.2:8080", false, false)])]
#[case::sorted(json!([{"addresses": ["198.18.1.10"]}, {"addresses": ["198.18.1.9"]}, {"addresses": ["198.18.1.2"]}]),
    vec![backend("198.18.1.2:8080", false, false), backend("198.18.1.9:8080", false, false), backend("198.18.1.10:8080", false, false)])]
fn endpoint_conditions(#[case] endpoints: Value, #[case] expected: Vec<DesiredBackend>) {
    let (backends, skips) =
        v4_backends(vec![slice("web-a", "web", "IPv4", http_port(), endpoints)]);
    assert_eq!(backends, expected);
    assert!(skips.is_empty(), "{skips:?}");
}

#[rstest]
#[case::named_port_matches(json!([{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}]), Some(8080))]
#[case::other_name(json!([{"name": "metrics", "port": 9090}]), None)]
#[case::unnamed_does_not_match_named(json!([{"port": 8080}]), None)]
#[case::protocol_must_match(json!([{"name": "http", "port": 8080, "protocol": "UDP"}]), None)]
#[case::nil_port_is_ignored(json!([{"name": "http"}]), None)]
fn slice_port_selection(#[case] ports: Value, #[case] port: Option<u16>) {
    let (backends, _) = v4_backends(vec![slice(
        "web-a",
        "web",
        "IPv4",
        ports,
        json!([{"addresses": ["198.18.1.2"]}]),
    )]);
    assert_eq!(
        backends.iter().map(|b| b.addr.port()).collect::<Vec<_>>(),
        port.into_iter().collect::<Vec<_>>()
    );
}

#[test]
fn unnamed_service_port_uses_the_unnamed_slice_port() {
    let svc = service(
        "web",
        json!({"clusterIP": "198.19.0.10", "ports": [{"port": 80, "targetPort": 8080}]}),
    );
    let s = slice(
        "web-a",
        "web",
        "IPv4",
        json!([{"name": "", "port": 8080}]),
        json!([{"addresses": ["198.18.1.2"]}]),
    );
    let desired = state_with(vec![svc], vec![s]).desired(&svc_name("web"));
    assert_eq!(
        desired.frontends[0].backends,
        vec![backend("198.18.1.2:8080", false, false)]
    );
}

#[test]
fn slices_join_by_family_and_fqdn_slices_are_ignored() {
    let v4 = slice(
        "web-4",
        "web",
        "IPv4",
        http_port(),
        json!([{"addresses": ["198.18.1.2"]}]),
    );
    let v6 = slice(
        "web-6",
        "web",
        "IPv6",
        http_port(),
        json!([{"addresses": ["fd00:18:0:1::2"]}]),
    );
    let fqdn = slice(
        "web-f",
        "web",
        "FQDN",
        http_port(),
        json!([{"addresses": ["example.org"]}]),
    );
    let desired = state_with(vec![http_service()], vec![v4, v6, fqdn]).desired(&svc_name("web"));
    let by_family: Vec<(bool, Vec<DesiredBackend>)> = desired
        .frontends
        .iter()
        .map(|f| (f.addr.is_ipv6(), f.backends.clone()))
        .collect();
    assert_eq!(
        by_family,
        vec![
            (false, vec![backend("198.18.1.2:8080", false, false)]),
            (true, vec![backend("[fd00:18:0:1::2]:8080", false, false)]),
        ]
    );
    assert!(desired.skipped.is_empty(), "{:?}", desired.skipped);
}

#[test]
fn multiple_slices_are_merged_and_identical_duplicates_count_once() {
    let a = slice(
        "web-a",
        "web",
        "IPv4",
        http_port(),
        json!([{"addresses": ["198.18.1.2"]}, {"addresses": ["198.18.1.3"]}]),
    );
    let b = slice(
        "web-b",
        "web",
        "IPv4",
        http_port(),
        json!([{"addresses": ["198.18.1.3"]}, {"addresses": ["198.18.1.4"]}]),
    );
    let (backends, skips) = v4_backends(vec![a, b]);
    assert_eq!(
        backends,
        ["198.18.1.2:8080", "198.18.1.3:8080", "198.18.1.4:8080"].map(|a| backend(a, false, false))
    );
    assert!(skips.is_empty());
}

#[rstest]
// The first slice by name wins...
#[case::first_wins(json!({"ready": true}), None, json!({"ready": false, "serving": false}), None, vec![backend("198.18.1.3:8080", false, false)])]
#[case::first_wins_not_ready(json!({"ready": false, "serving": false}), None, json!({"ready": true}), None, vec![])]
// ...unless a later one is on this node (kube-proxy's rule).
#[case::local_wins(json!({"ready": true}), Some("n2"), json!({"ready": true}), Some(NODE), vec![backend("198.18.1.3:8080", false, true)])]
fn conflicting_duplicates_are_skipped(
    #[case] first: Value,
    #[case] first_node: Option<&str>,
    #[case] second: Value,
    #[case] second_node: Option<&str>,
    #[case] expected: Vec<DesiredBackend>,
) {
    let a = slice(
        "web-a",
        "web",
        "IPv4",
        http_port(),
        json!([{"addresses": ["198.18.1.3"], "conditions": first, "nodeName": first_node}]),
    );
    let b = slice(
        "web-b",
        "web",
        "IPv4",
        http_port(),
        json!([{"addresses": ["198.18.1.3"], "conditions": second, "nodeName": second_node}]),
    );
    // Given in reverse name order: the store sorts slices by name.
    let (backends, skips) = v4_backends(vec![b, a]);
    assert_eq!(backends, expected);
    assert_eq!(skips, [reason::DUPLICATE_ENDPOINT]);
}

#[rstest]
#[case::bad_address(json!([{"addresses": ["198.18.1.999"]}, {"addresses": ["198.18.1.2"]}]), reason::INVALID_IP)]
#[case::wrong_family(json!([{"addresses": ["fd00:18::2"]}, {"addresses": ["198.18.1.2"]}]), reason::INVALID_IP)]
#[case::no_address(json!([{"addresses": []}, {"addresses": ["198.18.1.2"]}]), reason::INVALID_IP)]
fn invalid_endpoints_are_skipped(#[case] endpoints: Value, #[case] why: &str) {
    let (backends, skips) =
        v4_backends(vec![slice("web-a", "web", "IPv4", http_port(), endpoints)]);
    assert_eq!(backends, vec![backend("198.18.1.2:8080", false, false)]);
    assert_eq!(skips, [why]);
}

#[test]
fn an_invalid_slice_port_is_skipped() {
    let (backends, skips) = v4_backends(vec![slice(
        "web-a",
        "web",
        "IPv4",
        json!([{"name": "http", "port": 0}]),
        json!([{"addresses": ["198.18.1.2"]}]),
    )]);
    assert!(backends.is_empty());
    assert_eq!(skips, [reason::INVALID_PORT]);
}

#[test]
fn a_service_without_endpoints_keeps_its_frontends() {
    let desired = state_with(vec![http_service()], vec![]).desired(&svc_name("web"));
    assert_eq!(desired.frontends.len(), 2);
    assert!(desired.frontends.iter().all(|f| f.backends.is_empty()));
}

// ---------------------------------------------------------------------------------------
// Watch contract, joins, dirty tracking

fn web_slice(name: &str, addr: &str) -> EndpointSlice {
    slice(
        name,
        "web",
        "IPv4",
        http_port(),
        json!([{"addresses": [addr]}]),
    )
}

fn dirty(state: &mut ClusterState) -> Vec<String> {
    state
        .take_dirty()
        .into_iter()
        .map(|n| n.to_string())
        .collect()
}

#[rstest]
#[case::service_proxy_name_on_service(
    service_with_labels("web", json!({"service.kubernetes.io/service-proxy-name": "other"}), json!({"clusterIP": "198.19.0.10", "ports": [{"name": "http", "port": 80}]})),
    web_slice("web-a", "198.18.1.2"), 0)]
#[case::service_proxy_name_on_slice(http_service(),
    slice_with("web-a", json!({"kubernetes.io/service-name": "web", "service.kubernetes.io/service-proxy-name": "other"}), "IPv4", http_port(), json!([{"addresses": ["198.18.1.2"]}])), 2)]
#[case::headless_label_on_service(
    service_with_labels("web", json!({"service.kubernetes.io/headless": ""}), json!({"clusterIP": "198.19.0.10", "ports": [{"name": "http", "port": 80}]})),
    web_slice("web-a", "198.18.1.2"), 0)]
#[case::headless_label_on_slice(http_service(),
    slice_with("web-a", json!({"kubernetes.io/service-name": "web", "service.kubernetes.io/headless": ""}), "IPv4", http_port(), json!([{"addresses": ["198.18.1.2"]}])), 2)]
#[case::slice_without_service_name(http_service(),
    slice_with("web-a", json!({}), "IPv4", http_port(), json!([{"addresses": ["198.18.1.2"]}])), 2)]
#[case::slice_of_another_service(http_service(), slice("web-a", "api", "IPv4", http_port(), json!([{"addresses": ["198.18.1.2"]}])), 2)]
fn watch_contract(
    #[case] svc: Service,
    #[case] s: EndpointSlice,
    #[case] frontends_without_backends: usize,
) {
    let desired = state_with(vec![svc], vec![s]).desired(&svc_name("web"));
    assert_eq!(
        desired.frontends.len(),
        frontends_without_backends,
        "{desired:#?}"
    );
    assert!(desired.frontends.iter().all(|f| f.backends.is_empty()));
}

#[test]
fn a_slice_joins_only_its_own_namespace() {
    let mut other_ns = web_slice("web-a", "198.18.1.2");
    other_ns.metadata.namespace = Some("other".into());
    let desired = state_with(vec![http_service()], vec![other_ns]).desired(&svc_name("web"));
    assert!(desired.frontends.iter().all(|f| f.backends.is_empty()));
}

#[test]
fn a_missing_namespace_means_default() {
    let mut svc = http_service();
    svc.metadata.namespace = None;
    let mut s = web_slice("web-a", "198.18.1.2");
    s.metadata.namespace = None;
    let state = state_with(vec![svc], vec![s]);
    assert_eq!(state.service_names(), vec![svc_name("web")]);
    assert_eq!(
        state.desired(&svc_name("web")).frontends[0].backends.len(),
        1
    );
}

#[test]
fn events_mark_only_the_services_they_touch() {
    let api = service(
        "api",
        json!({"clusterIP": "198.19.0.20", "ports": [{"name": "http", "port": 80}]}),
    );
    let mut state = state_with(
        vec![http_service(), api.clone()],
        vec![web_slice("web-a", "198.18.1.2")],
    );
    assert_eq!(dirty(&mut state), ["default/api", "default/web"]);

    // A slice change marks its Service.
    state.apply_endpoint_slice(Event::Apply(web_slice("web-a", "198.18.1.3")));
    assert_eq!(dirty(&mut state), ["default/web"]);
    // The same object again changes nothing.
    state.apply_endpoint_slice(Event::Apply(web_slice("web-a", "198.18.1.3")));
    state.apply_service(Event::Apply(api.clone()));
    assert!(dirty(&mut state).is_empty());

    // A slice moving to another Service (label change) marks both.
    state.apply_endpoint_slice(Event::Apply(slice(
        "web-a",
        "api",
        "IPv4",
        http_port(),
        json!([{"addresses": ["198.18.1.3"]}]),
    )));
    assert_eq!(dirty(&mut state), ["default/api", "default/web"]);
    assert_eq!(
        state.desired(&svc_name("api")).frontends[0].backends.len(),
        1
    );
    assert!(state.desired(&svc_name("web")).frontends[0]
        .backends
        .is_empty());

    // A Service change or delete marks it; its desired state becomes empty on delete.
    state.apply_service(Event::Delete(api));
    assert_eq!(dirty(&mut state), ["default/api"]);
    assert!(state.desired(&svc_name("api")).frontends.is_empty());
    assert_eq!(state.service_names(), vec![svc_name("web")]);

    // A Service that gains the service-proxy-name label is gone for us.
    state.apply_service(Event::Apply(service_with_labels(
        "web",
        json!({"service.kubernetes.io/service-proxy-name": "other"}),
        json!({"clusterIP": "198.19.0.10", "ports": [{"name": "http", "port": 80}]}),
    )));
    assert_eq!(dirty(&mut state), ["default/web"]);
    assert!(state.desired(&svc_name("web")).frontends.is_empty());

    // Deleting a slice marks its Service.
    state.apply_endpoint_slice(Event::Delete(web_slice("web-a", "198.18.1.3")));
    assert_eq!(dirty(&mut state), ["default/api"]);
}

#[test]
fn a_relist_replaces_the_set_at_init_done_and_marks_only_what_differs() {
    let api = service(
        "api",
        json!({"clusterIP": "198.19.0.20", "ports": [{"name": "http", "port": 80}]}),
    );
    let db = service(
        "db",
        json!({"clusterIP": "198.19.0.30", "ports": [{"port": 5432}]}),
    );
    let mut state = state_with(
        vec![http_service(), api.clone(), db.clone()],
        vec![
            web_slice("web-a", "198.18.1.2"),
            web_slice("web-b", "198.18.1.3"),
        ],
    );
    state.take_dirty();

    // Relist: web unchanged, api changed, db gone; slice web-b gone.
    let mut api2 = api.clone();
    api2.spec.as_mut().unwrap().cluster_ip = Some("198.19.0.21".into());
    api2.spec.as_mut().unwrap().cluster_ips = None;
    state.apply_service(Event::<Service>::Init);
    state.apply_service(Event::InitApply(http_service()));
    state.apply_service(Event::InitApply(api2));
    // Until InitDone the previous objects keep serving.
    assert_eq!(state.service_names().len(), 3);
    assert!(dirty(&mut state).is_empty());
    state.apply_service(Event::<Service>::InitDone);
    assert_eq!(dirty(&mut state), ["default/api", "default/db"]);
    assert_eq!(
        state.service_names(),
        vec![svc_name("api"), svc_name("web")]
    );

    state.apply_endpoint_slice(Event::<EndpointSlice>::Init);
    state.apply_endpoint_slice(Event::InitApply(web_slice("web-a", "198.18.1.2")));
    assert_eq!(
        state.desired(&svc_name("web")).frontends[0].backends.len(),
        2
    );
    state.apply_endpoint_slice(Event::<EndpointSlice>::InitDone);
    assert_eq!(dirty(&mut state), ["default/web"]);
    assert_eq!(
        state.desired(&svc_name("web")).frontends[0].backends.len(),
        1
    );
    assert_eq!(state.object_counts(), (2, 1));
}

#[rstest]
#[case::nothing(false, false, false)]
#[case::services_only(true, false, false)]
#[case::slices_only(false, true, false)]
#[case::both(true, true, true)]
fn synced_needs_services_and_slices_but_not_nodes(
    #[case] services_done: bool,
    #[case] slices_done: bool,
    #[case] synced: bool,
) {
    let mut state = ClusterState::new(Some(NODE.into()));
    // Objects applied before the first list do not make a kind synced.
    state.apply_service(Event::Apply(http_service()));
    state.apply_service(Event::<Service>::Init);
    state.apply_endpoint_slice(Event::<EndpointSlice>::Init);
    if services_done {
        state.apply_service(Event::<Service>::InitDone);
    }
    if slices_done {
        state.apply_endpoint_slice(Event::<EndpointSlice>::InitDone);
    }
    assert_eq!(state.synced(), synced);
    assert!(!state.nodes_synced());
}

#[test]
fn only_this_nodes_object_is_kept() {
    let node = |name: &str, zone: &str| -> Node {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.19.255.1"}]},
        }))
        .expect("test Node")
    };
    let mut state = ClusterState::new(Some(NODE.into()));
    state.apply_node(Event::Apply(node("n2", "b")));
    assert_eq!(state.node(), None);
    state.apply_node(Event::<Node>::Init);
    state.apply_node(Event::InitApply(node("n2", "b")));
    state.apply_node(Event::InitApply(node(NODE, "a")));
    state.apply_node(Event::<Node>::InitDone);
    let info = state.node().expect("this node");
    assert_eq!(info.zone.as_deref(), Some("a"));
    assert_eq!(
        info.addresses,
        vec![("InternalIP".to_string(), "198.19.255.1".to_string())]
    );
    assert!(state.nodes_synced());
    state.apply_node(Event::Delete(node(NODE, "a")));
    assert_eq!(state.node(), None);
    // Nodes never mark Services dirty.
    assert!(state.take_dirty().is_empty());
}

#[test]
fn last_change_trigger_time_is_the_latest_of_the_slices() {
    let stamp = |name: &str, at: &str| {
        let mut s = web_slice(name, "198.18.1.2");
        s.metadata.annotations = Some(
            [(
                "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
                at.to_string(),
            )]
            .into(),
        );
        s
    };
    // Compared as instants: 10:00:00.5Z is later than 10:00:00Z, and 11:00+02:00 is 09:00Z.
    let state = state_with(
        vec![http_service()],
        vec![
            stamp("web-a", "2026-05-01T10:00:00Z"),
            stamp("web-b", "2026-05-01T10:00:00.5Z"),
            stamp("web-c", "2026-05-01T11:00:00+02:00"),
        ],
    );
    assert_eq!(
        state
            .desired(&svc_name("web"))
            .last_change_trigger_time
            .as_deref(),
        Some("2026-05-01T10:00:00.5Z")
    );
}

/// Only what the model reads is kept, so a change to anything else (status, annotations,
/// selectors, `targetRef`, hostnames) marks nothing dirty, while a change to a read field
/// (a condition) does.
#[test]
fn changes_to_fields_the_model_does_not_read_mark_nothing() {
    let mut state = state_with(vec![http_service()], vec![web_slice("web-a", "198.18.1.2")]);
    dirty(&mut state);

    let mut svc = http_service();
    svc.metadata.annotations = Some([("note".to_string(), "x".to_string())].into());
    svc.spec.as_mut().unwrap().selector = Some([("app".to_string(), "web".to_string())].into());
    state.apply_service(Event::Apply(svc));
    let unread = slice(
        "web-a",
        "web",
        "IPv4",
        http_port(),
        json!([{"addresses": ["198.18.1.2"], "hostname": "pod-a",
                "targetRef": {"kind": "Pod", "name": "pod-a"}}]),
    );
    state.apply_endpoint_slice(Event::Apply(unread));
    assert_eq!(dirty(&mut state), Vec::<String>::new());

    let not_ready = slice(
        "web-a",
        "web",
        "IPv4",
        http_port(),
        json!([{"addresses": ["198.18.1.2"], "conditions": {"ready": false}}]),
    );
    state.apply_endpoint_slice(Event::Apply(not_ready));
    assert_eq!(dirty(&mut state), vec!["default/web".to_string()]);
    assert!(state.desired(&svc_name("web")).frontends[0]
        .backends
        .is_empty());
}
