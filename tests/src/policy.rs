//! Kubernetes objects for NetworkPolicy tests (Namespace, Pod, NetworkPolicy), built from
//! JSON as a manifest would write them, and a driver that feeds them to the policy model
//! and programs the result with the real `PolicyWriter` (until the daemon's own policy
//! wiring drives the maps).

use std::net::IpAddr;

use anyhow::Context as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::{json, Value};
use service_lb::{
    dataplane::{policy_maps::PolicyMapStore, policy_writer::PolicyWriter},
    model::policy::{sink::PolicySink, PolicyModel},
};

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Namespace> {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))
    .context("namespace")
}

/// A container port: (name, port, protocol).
pub type PortSpec<'a> = (&'a str, u16, &'a str);

/// A running pod on `node` with `ips` and one container serving `ports`.
pub fn pod(
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    node: &str,
    ips: &[IpAddr],
    ports: &[PortSpec<'_>],
) -> anyhow::Result<Pod> {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "containerPort": p, "protocol": proto}))
        .collect();
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ips.first().map(|ip| ip.to_string()), "podIPs": pod_ips},
    }))
    .context("pod")
}

/// A NetworkPolicy with `spec` as written in a manifest.
pub fn policy(ns: &str, name: &str, spec: Value) -> anyhow::Result<NetworkPolicy> {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .with_context(|| format!("policy {ns}/{name}"))
}

/// The model of one node and the writer programming it.
pub struct PolicyDriver<S: PolicyMapStore> {
    pub model: PolicyModel,
    pub writer: PolicyWriter<S>,
}

impl<S: PolicyMapStore> PolicyDriver<S> {
    pub fn new(node: &str, store: S) -> Self {
        Self {
            model: PolicyModel::new(node),
            writer: PolicyWriter::new(store),
        }
    }

    /// Recomputes the model and applies what changed.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        let changes = self.model.recompute();
        self.writer.apply(&self.model, &changes)
    }
}
