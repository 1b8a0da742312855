//! NetworkPolicy in the daemon: Pod, Namespace and NetworkPolicy events feed this node's
//! [`PolicyModel`]; a sync recompiles what changed and hands it to the [`PolicySink`].
//!
//! Same watch contract as the Services: a (re)list (`Init`, `InitApply`*, `InitDone`) is
//! buffered as views and replaces the kind's whole set at `InitDone` (objects not relisted
//! are deleted then, never before). Nothing is programmed until all three kinds have
//! completed their first list: a half list could isolate a pod without its allow rules.
//! The first sync and the periodic resync are full ([`PolicySink::resync`]), the others
//! incremental ([`PolicySink::apply`] of [`PolicyModel::recompute`]'s changes). A failed
//! sync keeps the previous programming, is counted, and makes the next sync a full one.
//!
//! After each successful sync that changed something, the [`PolicySnapshot`] (names the
//! kernel maps do not hold) is written atomically for `service-lb inspect policy`.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::runtime::watcher;
use tracing::{debug, error, info, warn};

use crate::{
    model::policy::{
        sink::PolicySink, snapshot::PolicySnapshot, NamespaceView, ObjectKey, PodView, PolicyModel,
        PolicyView,
    },
    telemetry::policy_metrics::PolicyMetrics,
};

/// Where the daemon keeps files that are not maps (bpffs holds maps and links only).
pub const STATE_ROOT: &str = "/run/service-lb";

/// The policy snapshot of the daemon whose pin folder is `bpffs`: one file per pin folder
/// (so test daemons with their own pin folders do not share it), under [`STATE_ROOT`].
pub fn snapshot_path(bpffs: &Path) -> PathBuf {
    let flat: String = bpffs
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    Path::new(STATE_ROOT).join(flat).join("policy.json")
}

/// Removes the snapshot (and its folder) of the daemon pinned under `bpffs`: part of
/// `service-lb cleanup`. Nothing there is fine.
pub fn remove_snapshot(bpffs: &Path) -> std::io::Result<()> {
    let path = snapshot_path(bpffs);
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// THE place the daemon's policy sink is chosen: the kernel maps' writer over the maps
/// pinned under `bpffs` (its first resync removes whatever a previous run left that the
/// model no longer compiles).
pub fn default_sink(
    bpffs: &std::path::Path,
) -> Result<Box<dyn PolicySink + Send>, crate::dataplane::DataplaneError> {
    let maps = crate::dataplane::policy_maps::BpfPolicyMaps::open_pinned(bpffs)?;
    Ok(Box::new(
        crate::dataplane::policy_writer::PolicyWriter::new(maps),
    ))
}

/// One kind's list in progress.
#[derive(Debug)]
struct Relist<V> {
    objects: Vec<V>,
}

impl<V> Default for Relist<V> {
    fn default() -> Self {
        Self {
            objects: Vec::new(),
        }
    }
}

/// What one policy sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySyncDone {
    pub full: bool,
    pub updated: usize,
    pub removed: usize,
    pub failed: bool,
}

pub struct PolicySync {
    model: PolicyModel,
    sink: Box<dyn PolicySink + Send>,
    metrics: PolicyMetrics,
    snapshot: Option<PathBuf>,
    pods: Option<Relist<PodView>>,
    namespaces: Option<Relist<NamespaceView>>,
    policies: Option<Relist<PolicyView>>,
    /// First `InitDone` seen, per kind (pods, namespaces, policies).
    listed: [bool; 3],
    /// A change arrived since the last sync.
    pending: bool,
    /// The next sync must be a full one (nothing programmed yet, or the last one failed).
    needs_full: bool,
}

impl std::fmt::Debug for PolicySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySync")
            .field("node", &self.model.node())
            .field("listed", &self.listed)
            .field("pending", &self.pending)
            .field("needs_full", &self.needs_full)
            .finish_non_exhaustive()
    }
}

impl PolicySync {
    /// `snapshot`: where to write the inspect snapshot (`None`: not written).
    pub fn new(
        node: &str,
        sink: Box<dyn PolicySink + Send>,
        metrics: PolicyMetrics,
        snapshot: Option<PathBuf>,
    ) -> Self {
        Self {
            model: PolicyModel::new(node),
            sink,
            metrics,
            snapshot,
            pods: None,
            namespaces: None,
            policies: None,
            listed: [false; 3],
            pending: false,
            needs_full: true,
        }
    }

    pub fn model(&self) -> &PolicyModel {
        &self.model
    }

    /// All three kinds have completed their first list.
    pub fn synced(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    /// A sync would do something now.
    pub fn wants_sync(&self) -> bool {
        self.synced() && (self.pending || self.needs_full)
    }

    pub fn on_pod(&mut self, event: watcher::Event<Arc<Pod>>) {
        self.pending = true;
        match event {
            watcher::Event::Apply(p) => self.model.put_pod(PodView::of(&p)),
            watcher::Event::Delete(p) => {
                let view = PodView::of(&p);
                self.model.delete_pod(&view.key.namespace, &view.key.name);
            }
            watcher::Event::Init => self.pods = Some(Relist::default()),
            watcher::Event::InitApply(p) => self
                .pods
                .get_or_insert_with(Relist::default)
                .objects
                .push(PodView::of(&p)),
            watcher::Event::InitDone => {
                let listed = self.pods.take().unwrap_or_default().objects;
                let keep: HashSet<&ObjectKey> = listed.iter().map(|p| &p.key).collect();
                let gone: Vec<ObjectKey> = self
                    .model
                    .pods()
                    .filter(|p| !keep.contains(&p.key))
                    .map(|p| p.key.clone())
                    .collect();
                for key in gone {
                    self.model.delete_pod(&key.namespace, &key.name);
                }
                for view in listed {
                    self.model.put_pod(view);
                }
                self.listed[0] = true;
            }
        }
    }

    pub fn on_namespace(&mut self, event: watcher::Event<Arc<Namespace>>) {
        self.pending = true;
        match event {
            watcher::Event::Apply(n) => self.model.put_namespace(NamespaceView::of(&n)),
            watcher::Event::Delete(n) => self.model.delete_namespace(&NamespaceView::of(&n).name),
            watcher::Event::Init => self.namespaces = Some(Relist::default()),
            watcher::Event::InitApply(n) => self
                .namespaces
                .get_or_insert_with(Relist::default)
                .objects
                .push(NamespaceView::of(&n)),
            watcher::Event::InitDone => {
                let listed = self.namespaces.take().unwrap_or_default().objects;
                let keep: HashSet<&str> = listed.iter().map(|n| n.name.as_str()).collect();
                let gone: Vec<String> = self
                    .model
                    .namespaces()
                    .filter(|n| !keep.contains(n.name.as_str()))
                    .map(|n| n.name.clone())
                    .collect();
                for name in gone {
                    self.model.delete_namespace(&name);
                }
                for view in listed {
                    self.model.put_namespace(view);
                }
                self.listed[1] = true;
            }
        }
    }

    pub fn on_policy(&mut self, event: watcher::Event<Arc<NetworkPolicy>>) {
        self.pending = true;
        match event {
            watcher::Event::Apply(p) => self.model.put_policy(PolicyView::of(&p)),
            watcher::Event::Delete(p) => {
                let key = PolicyView::of(&p).key;
                self.model.delete_policy(&key.namespace, &key.name);
            }
            watcher::Event::Init => self.policies = Some(Relist::default()),
            watcher::Event::InitApply(p) => self
                .policies
                .get_or_insert_with(Relist::default)
                .objects
                .push(PolicyView::of(&p)),
            watcher::Event::InitDone => {
                let listed = self.policies.take().unwrap_or_default().objects;
                let keep: HashSet<&ObjectKey> = listed.iter().map(|p| &p.key).collect();
                let gone: Vec<ObjectKey> = self
                    .model
                    .policies()
                    .filter(|p| !keep.contains(&p.key))
                    .map(|p| p.key.clone())
                    .collect();
                for key in gone {
                    self.model.delete_policy(&key.namespace, &key.name);
                }
                for view in listed {
                    self.model.put_policy(view);
                }
                self.listed[2] = true;
            }
        }
    }

    /// Recompiles and programs what changed (everything when `full` or when the last
    /// sync failed). `None` before every kind has listed.
    pub fn sync(&mut self, full: bool) -> Option<PolicySyncDone> {
        if !self.synced() {
            return None;
        }
        let full = full || self.needs_full;
        self.pending = false;
        let started = Instant::now();
        let changes = self.model.recompute();
        self.metrics
            .observe_compile(started.elapsed().as_secs_f64());
        let result = if full {
            self.sink.resync(&self.model)
        } else if changes.is_empty() {
            Ok(())
        } else {
            self.sink.apply(&self.model, &changes)
        };
        self.metrics.set_policies(self.model.policies().count());
        let done = PolicySyncDone {
            full,
            updated: changes.updated.len(),
            removed: changes.removed.len(),
            failed: result.is_err(),
        };
        match result {
            Ok(()) => {
                self.needs_full = false;
                self.metrics.set_programmed(self.model.compiled().len());
                if full || !changes.is_empty() {
                    info!(
                        full,
                        updated = done.updated,
                        removed = done.removed,
                        local_pods = self.model.compiled().len(),
                        took_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "policy synced"
                    );
                    self.write_snapshot();
                }
            }
            Err(e) => {
                // The sink keeps what it programmed before; the model has moved on, so the
                // next sync reprograms everything.
                self.needs_full = true;
                self.metrics.count_sync_failure();
                error!(error = format!("{e:#}"), "policy sync failed; the previous policy state keeps serving, the next sync retries in full");
            }
        }
        Some(done)
    }

    fn write_snapshot(&self) {
        let Some(path) = &self.snapshot else { return };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let snapshot = PolicySnapshot::of(&self.model, now);
        match write_atomically(path, &snapshot) {
            Ok(()) => debug!(path = %path.display(), "policy snapshot written"),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot write the policy snapshot (inspect policy shows an older one)")
            }
        }
    }
}

/// Writes `snapshot` as JSON to a temporary file beside `path`, then renames it over.
pub fn write_atomically(path: &Path, snapshot: &PolicySnapshot) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
