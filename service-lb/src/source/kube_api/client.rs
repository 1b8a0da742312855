//! The API client: an explicit kubeconfig file, else kube's inference (in-cluster service
//! account, then `$KUBECONFIG` / `~/.kube/config`).

use std::path::Path;

use anyhow::Context;
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};
use tracing::debug;

pub(super) async fn build(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no Kubernetes API config: not in a cluster and no kubeconfig found")?,
    };
    debug!(server = %config.cluster_url, "Kubernetes API client");
    Client::try_from(config).context("building the Kubernetes API client")
}
