//! One watcher stream per kind, with kube-proxy's watch contract, forwarded to the channel.

use std::{fmt::Debug, sync::Arc};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
    networking::v1::ServiceCIDR,
};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, trace, warn};

use crate::source::{shared, strip, SourceEvent, LABEL_SERVICE_PROXY_NAME};

/// Services and EndpointSlices handed to another proxy are not ours (kube-proxy's selector).
pub(crate) fn not_other_proxy() -> String {
    format!("!{LABEL_SERVICE_PROXY_NAME}")
}

pub(crate) fn service_config() -> watcher::Config {
    watcher::Config::default().labels(&not_other_proxy())
}

/// Headless slices are left to the model, which skips them by label.
pub(crate) fn endpoint_slice_config() -> watcher::Config {
    watcher::Config::default().labels(&not_other_proxy())
}

pub(crate) fn node_config(node_name: &str) -> watcher::Config {
    watcher::Config::default().fields(&format!("metadata.name={node_name}"))
}

/// Pods, Namespaces and NetworkPolicies: every object (policies select by labels, on any
/// node; finished pods are left to the model).
pub(crate) fn policy_config() -> watcher::Config {
    watcher::Config::default()
}

/// Runs every watcher until the receiver is gone. `network_policy`: also Pods, Namespaces
/// and NetworkPolicies.
pub(super) async fn forward_all(
    client: Client,
    node_name: Option<String>,
    network_policy: bool,
    events: mpsc::Sender<SourceEvent>,
) {
    let services = forward(
        "Service",
        watch_stream(Api::<Service>::all(client.clone()), service_config()),
        events.clone(),
        SourceEvent::Service,
    );
    let slices = forward(
        "EndpointSlice",
        watch_stream(
            Api::<EndpointSlice>::all(client.clone()),
            endpoint_slice_config(),
        ),
        events.clone(),
        SourceEvent::EndpointSlice,
    );
    let node = async {
        match node_name {
            Some(name) => {
                let stream = watch_stream(Api::<Node>::all(client.clone()), node_config(&name));
                forward("Node", stream, events.clone(), SourceEvent::Node).await;
            }
            None => info!("no node name: this node's Node object is not watched"),
        }
    };
    // Cluster-scoped, all of them (the allocator's ranges). An API server without the kind
    // (before Kubernetes 1.33) fails this watch with backoff forever; nothing waits on it.
    let service_cidrs = forward(
        "ServiceCIDR",
        watch_stream(
            Api::<ServiceCIDR>::all(client.clone()),
            watcher::Config::default(),
        ),
        events.clone(),
        SourceEvent::ServiceCidr,
    );
    let policy = async {
        if network_policy {
            forward_policy_kinds(client.clone(), events.clone()).await;
        } else {
            info!("network policy off: Pods, Namespaces and NetworkPolicies are not watched");
        }
    };
    // Each ends only when the receiver is gone; then all do.
    tokio::select! {
        () = services => {}
        () = slices => {}
        () = service_cidrs => {}
        () = async { node.await; std::future::pending::<()>().await } => {}
        () = async { policy.await; std::future::pending::<()>().await } => {}
    }
}

/// The NetworkPolicy kinds, each stripped to what the policy model reads before it is
/// forwarded (nothing else of a Pod travels or is kept).
async fn forward_policy_kinds(client: Client, events: mpsc::Sender<SourceEvent>) {
    let pods = forward(
        "Pod",
        watch_stream(Api::<Pod>::all(client.clone()), policy_config())
            .modify(|p: &mut Pod| *p = strip::pod(std::mem::take(p))),
        events.clone(),
        SourceEvent::Pod,
    );
    let namespaces = forward(
        "Namespace",
        watch_stream(Api::<Namespace>::all(client.clone()), policy_config())
            .modify(|n: &mut Namespace| *n = strip::namespace(std::mem::take(n))),
        events.clone(),
        SourceEvent::Namespace,
    );
    let policies = forward(
        "NetworkPolicy",
        watch_stream(Api::<NetworkPolicy>::all(client), policy_config())
            .modify(|n: &mut NetworkPolicy| *n = strip::network_policy(std::mem::take(n))),
        events,
        SourceEvent::NetworkPolicy,
    );
    tokio::select! {
        () = pods => {}
        () = namespaces => {}
        () = policies => {}
    }
}

fn watch_stream<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

/// Forwards one kind's events unchanged; logs errors (the backoff retries them).
async fn forward<K, S>(
    kind: &'static str,
    stream: S,
    events: mpsc::Sender<SourceEvent>,
    wrap: fn(Box<watcher::Event<Arc<K>>>) -> SourceEvent,
) where
    S: Stream<Item = watcher::Result<watcher::Event<K>>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                trace!(kind, event = event_name(&event), "watch event");
                if events.send(wrap(Box::new(shared(event)))).await.is_err() {
                    return;
                }
            }
            Err(error) => warn!(kind, %error, "watch failed; retrying with backoff"),
        }
    }
    // kube's watcher never ends; should it, the others keep going.
    warn!(kind, "watch stream ended");
    std::future::pending::<()>().await;
}

fn event_name<K>(event: &watcher::Event<K>) -> &'static str {
    match event {
        watcher::Event::Init => "Init",
        watcher::Event::InitApply(_) => "InitApply",
        watcher::Event::InitDone => "InitDone",
        watcher::Event::Apply(_) => "Apply",
        watcher::Event::Delete(_) => "Delete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_watch_contract() {
        let not_other = Some("!service.kubernetes.io/service-proxy-name".to_string());
        assert_eq!(service_config().label_selector, not_other);
        assert_eq!(endpoint_slice_config().label_selector, not_other);
        let node = node_config("n1");
        assert_eq!(node.field_selector.as_deref(), Some("metadata.name=n1"));
        assert_eq!(node.label_selector, None);
    }
}
