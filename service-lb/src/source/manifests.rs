//! The manifests-folder source: every `*.yaml`, `*.yml`, `*.json` file of a folder,
//! multi-document, watched for changes. (helper "model" writes `parse`, helper "sources"
//! writes the watching)

pub mod parse;

use std::{path::PathBuf, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SourceEvent;

#[derive(Clone, Debug)]
pub struct ManifestsConfig {
    pub dir: PathBuf,
    /// This node's name: only the Node object of that name is passed on.
    pub node_name: Option<String>,
    /// Quiet time after a change before the folder is read again.
    pub debounce: Duration,
}

/// Reads the folder, sends the initial list of every kind, then watches until `cancel`.
pub async fn run(
    _config: ManifestsConfig,
    _events: mpsc::Sender<SourceEvent>,
    _cancel: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("the manifests source is not written yet")
}
