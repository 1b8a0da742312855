//! The Kubernetes API source: kube-runtime watchers for Service, EndpointSlice, this Node
//! and ServiceCIDR, and (network policy on) Pod, Namespace and NetworkPolicy, stripped at
//! the source.
//!
//! Each kind is one `watcher` stream with kube-proxy's selectors and the default backoff.
//! Every watcher event is forwarded unchanged: a (re)list (first start, after a 410 Gone,
//! after the watch could not resume) arrives as `Init`, `InitApply`*, `InitDone`, so objects
//! deleted meanwhile disappear at `InitDone` and never before. Watch errors are logged and
//! retried by the backoff; they never end the source.

mod client;
mod streams;

use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::SourceEvent;

#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    /// Explicit kubeconfig; `None` = in-cluster config, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (its Node object is watched by field selector).
    pub node_name: Option<String>,
    /// Also watch Pods, Namespaces and NetworkPolicies (`--network-policy on`).
    pub network_policy: bool,
}

/// A client as the source builds it (explicit kubeconfig, else in-cluster, then
/// `~/.kube/config`), for the daemon's other API users (Kubernetes Events).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    client::build(kubeconfig).await
}

/// Watches until `cancel` fires; reconnects with backoff on its own. Returns an error only
/// when no client can be built at all (bad kubeconfig). Ends early (with `Ok`) when the
/// receiver of `events` is gone.
pub async fn run(
    config: KubeSourceConfig,
    events: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let client = client::build(config.kubeconfig.as_deref()).await?;
    info!(
        node = config.node_name.as_deref().unwrap_or("<none>"),
        network_policy = config.network_policy,
        "watching Services, EndpointSlices, ServiceCIDRs and this Node"
    );
    let all = streams::forward_all(client, config.node_name, config.network_policy, events);
    tokio::select! {
        biased;
        () = cancel.cancelled() => debug!("Kubernetes API source cancelled"),
        () = all => debug!("Kubernetes API source: receiver gone, stopping"),
    }
    Ok(())
}
