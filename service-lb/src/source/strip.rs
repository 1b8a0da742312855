//! Strips Pods, Namespaces and NetworkPolicies down to what the policy model reads, before
//! they travel or are kept anywhere (the API source's channel, the manifests folder's
//! stored copies). A cluster's Pods are its biggest objects (`managedFields`, annotations,
//! container images, env, volumes, full status); the model needs only a few fields of
//! each, and `model::policy::view` is the reference for which: a stripped object must give
//! the same view as the whole one (tested below).

use k8s_openapi::{
    api::{
        core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// Identity and labels only (no annotations, managedFields, owners, finalizers...).
fn meta(meta: &mut ObjectMeta) {
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: meta.labels.take(),
        resource_version: meta.resource_version.take(),
        ..ObjectMeta::default()
    };
}

/// A Pod: labels, `spec.nodeName`, `spec.hostNetwork`, the containers' names and named
/// ports, `status.phase`, `status.podIP(s)`.
pub fn pod(mut pod: Pod) -> Pod {
    meta(&mut pod.metadata);
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        node_name: spec.node_name,
        host_network: spec.host_network,
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .filter(|p| p.name.as_deref().is_some_and(|n| !n.is_empty()))
                        .map(|p| ContainerPort {
                            name: p.name,
                            container_port: p.container_port,
                            protocol: p.protocol,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        pod_ip: status.pod_ip,
        pod_ips: status.pod_ips,
        ..PodStatus::default()
    });
    pod
}

/// A Namespace: its name and labels.
pub fn namespace(mut ns: Namespace) -> Namespace {
    meta(&mut ns.metadata);
    ns.spec = None;
    ns.status = None;
    ns
}

/// A NetworkPolicy: identity and the whole spec (every field of it is read).
pub fn network_policy(mut np: NetworkPolicy) -> NetworkPolicy {
    meta(&mut np.metadata);
    np
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::core::v1::{EnvVar, PodIP},
        apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    };

    use super::*;
    use crate::model::policy::{NamespaceView, PodView, PolicyView};

    fn fat_meta(ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(Into::into),
            labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            annotations: Some(BTreeMap::from([(
                "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                "x".repeat(4096),
            )])),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                ..ManagedFieldsEntry::default()
            }]),
            uid: Some("u".into()),
            ..ObjectMeta::default()
        }
    }

    fn fat_pod() -> Pod {
        Pod {
            metadata: fat_meta(Some("x"), "a"),
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("registry.example/very/long/image:tag".into()),
                    env: Some(vec![EnvVar {
                        name: "E".into(),
                        value: Some("v".repeat(1000)),
                        ..EnvVar::default()
                    }]),
                    ports: Some(vec![
                        ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            protocol: Some("TCP".into()),
                            host_port: Some(80),
                            ..ContainerPort::default()
                        },
                        ContainerPort {
                            container_port: 9090,
                            ..ContainerPort::default()
                        },
                        ContainerPort {
                            name: Some("dns".into()),
                            container_port: 53,
                            protocol: Some("UDP".into()),
                            ..ContainerPort::default()
                        },
                    ]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("198.18.1.5".into()),
                pod_ips: Some(vec![
                    PodIP {
                        ip: "198.18.1.5".into(),
                    },
                    PodIP {
                        ip: "fd00:18:0:1::5".into(),
                    },
                ]),
                host_ip: Some("198.19.255.1".into()),
                message: Some("m".repeat(500)),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_stripped_pod_gives_the_same_view_and_is_small() {
        let fat = fat_pod();
        let thin = pod(fat.clone());
        assert_eq!(PodView::of(&thin), PodView::of(&fat));
        let thin_meta = &thin.metadata;
        assert!(thin_meta.managed_fields.is_none());
        assert!(thin_meta.annotations.is_none());
        let c = &thin.spec.as_ref().expect("spec").containers[0];
        assert_eq!(c.image, None);
        assert_eq!(c.env, None);
        let ports = c.ports.as_ref().expect("ports");
        assert_eq!(ports.len(), 2, "unnamed ports are dropped: {ports:?}");
        assert_eq!(ports[0].host_port, None);
        assert_eq!(thin.status.as_ref().expect("status").host_ip, None);
        let size = |p: &Pod| serde_json::to_vec(p).map(|v| v.len()).unwrap_or(0);
        assert!(
            size(&thin) * 10 < size(&fat),
            "{} vs {}",
            size(&thin),
            size(&fat)
        );
    }

    #[test]
    fn a_host_network_pod_stays_host_network() {
        let mut fat = fat_pod();
        if let Some(spec) = fat.spec.as_mut() {
            spec.host_network = Some(true);
        }
        let thin = pod(fat.clone());
        assert_eq!(PodView::of(&thin), PodView::of(&fat));
        assert!(PodView::of(&thin).ips.is_empty());
    }

    #[test]
    fn namespaces_and_policies_keep_their_views() {
        let fat = Namespace {
            metadata: fat_meta(None, "x"),
            ..Namespace::default()
        };
        let thin = namespace(fat.clone());
        assert_eq!(NamespaceView::of(&thin), NamespaceView::of(&fat));
        assert!(thin.metadata.annotations.is_none());

        let fat: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "x",
                         "annotations": {"a": "b"}, "managedFields": [{"manager": "m"}]},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.200.0/24",
                                                       "except": ["198.19.200.0/28"]}}],
                                  "ports": [{"port": "http"}]}],
                     "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}
        }))
        .expect("a policy");
        let thin = network_policy(fat.clone());
        assert_eq!(PolicyView::of(&thin), PolicyView::of(&fat));
        assert!(thin.metadata.managed_fields.is_none());
        assert!(thin.metadata.annotations.is_none());
    }
}
