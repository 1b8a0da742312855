//! `--lb-algorithm` and the `service-lb.io/lb-algorithm` annotation: which north-south
//! frontends get Maglev.

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::runtime::watcher::Event;
use serde_json::{json, Value};

use super::{maglev::LbAlgorithm, reason, ClusterState, ServiceDesired, ServiceName};

const NODE: &str = "test-node";

fn service(annotation: Option<&str>) -> Value {
    let mut metadata = json!({"name": "svc1", "namespace": "ns1"});
    if let Some(value) = annotation {
        metadata["annotations"] = json!({"service-lb.io/lb-algorithm": value});
    }
    json!({
        "metadata": metadata,
        "spec": {
            "type": "LoadBalancer", "clusterIP": "198.19.0.41",
            "externalIPs": ["198.19.200.11"],
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 30080}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "198.19.200.200"}]}},
    })
}

fn desired(annotation: Option<&str>, default: LbAlgorithm) -> ServiceDesired {
    let mut state = ClusterState::new(Some(NODE.into()));
    state.set_lb_algorithm(default);
    state.set_interface_addresses(vec!["198.19.255.2".parse().unwrap()]);
    state.apply_service(Event::<Service>::Init);
    let svc: Service = serde_json::from_value(service(annotation)).unwrap();
    state.apply_service(Event::InitApply(svc));
    state.apply_service(Event::<Service>::InitDone);
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "svc1-abc", "namespace": "ns1",
                     "labels": {"kubernetes.io/service-name": "svc1"}},
        "addressType": "IPv4",
        "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["198.18.2.1"]}, {"addresses": ["198.18.1.1"]}],
    }))
    .unwrap();
    state.apply_endpoint_slice(Event::<EndpointSlice>::Init);
    state.apply_endpoint_slice(Event::InitApply(slice));
    state.apply_endpoint_slice(Event::<EndpointSlice>::InitDone);
    state.desired(&ServiceName {
        namespace: "ns1".into(),
        name: "svc1".into(),
    })
}

/// Every north-south frontend's `maglev` (NodePort, externalIP, LB IP).
fn maglev(d: &ServiceDesired) -> Vec<bool> {
    assert!(d.external.len() >= 3, "{d:#?}");
    d.external.iter().map(|f| f.maglev).collect()
}

#[test]
fn the_annotation_wins_over_the_daemon_default() {
    use LbAlgorithm::*;
    for (annotation, default, want) in [
        (None, Random, false),
        (None, Maglev, true),
        (Some("maglev"), Random, true),
        (Some("random"), Maglev, false),
    ] {
        let d = desired(annotation, default);
        assert!(
            maglev(&d).iter().all(|m| *m == want),
            "{annotation:?} / {default:?}: {d:#?}"
        );
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
    }
}

#[test]
fn an_unknown_annotation_uses_the_default_and_is_reported() {
    let d = desired(Some("round-robin"), LbAlgorithm::Maglev);
    assert!(maglev(&d).iter().all(|m| *m));
    assert_eq!(
        d.skipped.iter().map(|s| s.reason).collect::<Vec<_>>(),
        vec![reason::INVALID_LB_ALGORITHM]
    );
}
