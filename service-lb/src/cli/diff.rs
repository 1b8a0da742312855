//! `service-lb diff`: what the cluster (the API, or a manifests folder) says this node's
//! data plane should hold, compared with what its pinned maps hold, Service by Service.
//!
//! The desired side is the daemon's own: the source's initial list fed into the model
//! (`ClusterState`, for `--node`), each frontend turned into the map entries the writer
//! would write (`sync::frontend_spec`). The actual side is read from the pinned maps
//! (read only: nothing is written), named from the names map. Exit code 0 when equal, 1
//! when they differ, 2 on error.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::Args;
use serde::Serialize;
use service_lb_common::{service::BACKEND_FLAG_LOCAL, SvcName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    inspect::services::{flag_names, proto_name},
    output::{self, Format, TableRow},
};
use crate::{
    dataplane::{
        pin, sync::specs_of, BackendSpec, BpfMaps, Cidr, Family, FrontendKey, FrontendSpec,
        L4Proto, MapStore, DEFAULT_BPFFS,
    },
    model::{ClusterState, ServiceDesired, ServiceName},
    source::{self, kube_api::KubeSourceConfig, manifests::ManifestsConfig, SourceEvent},
};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// kubeconfig file; default: in-cluster config, then ~/.kube/config.
    #[arg(long, env = "SERVICE_LB_KUBECONFIG", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Read the desired state from this folder of manifests instead of the API.
    #[arg(long, env = "SERVICE_LB_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// The node whose data plane this is (node-local backends). Falls back to $NODE_NAME,
    /// then the host name.
    #[arg(long = "node", env = "NODE_NAME")]
    pub node: Option<String>,
    /// bpffs folder of the data plane.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Output format (table, json or yaml).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// How long to wait for the source's complete list.
    #[arg(long, default_value = "30s", value_parser = crate::cli::run::parse_duration)]
    pub timeout: Duration,
}

/// Whether the maps hold what the cluster wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Equal,
    Differ,
}

/// Exit code when the maps differ.
pub const EXIT_DIFFER: u8 = 1;
/// Exit code on an error.
pub const EXIT_ERROR: u8 = 2;

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DiffRow {
    /// `namespace/name`; for an extra frontend the name the maps recorded, `-` if none.
    pub service: String,
    /// `vip:port/proto` (and ` scope N` for the internal scope).
    pub frontend: String,
    /// `missing` (wanted, not in the maps), `extra` (in the maps, not wanted) or
    /// `different`.
    pub change: Change,
    /// What differs, one item per difference.
    pub details: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Missing,
    Extra,
    Different,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing",
            Self::Extra => "extra",
            Self::Different => "different",
        })
    }
}

impl TableRow for DiffRow {
    const HEADER: &'static [&'static str] = &["service", "frontend", "change", "details"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.service.clone(),
            self.frontend.clone(),
            self.change.to_string(),
            self.details.join("\n"),
        ]
    }
}

/// One frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actual {
    pub service_id: u32,
    pub flags: u16,
    pub affinity_timeout_s: u32,
    /// Per slot: the backend, or why it could not be read.
    pub slots: Vec<Result<BackendSpec, String>>,
    pub name: Option<SvcName>,
    /// The source-range trie's entries of this service id, sorted.
    pub source_ranges: Vec<Cidr>,
}

/// Every frontend in the maps (both families), read only.
pub fn actual(store: &impl MapStore) -> anyhow::Result<BTreeMap<FrontendKey, Actual>> {
    let names: BTreeMap<u32, SvcName> = store.list_names()?.into_iter().collect();
    let mut out = BTreeMap::new();
    for family in Family::ALL {
        let mut ranges: BTreeMap<u32, Vec<Cidr>> = BTreeMap::new();
        for (id, cidr) in store.list_source_ranges(family)? {
            ranges.entry(id).or_default().push(cidr);
        }
        let entries: BTreeMap<_, _> = store.list_services(family)?.into_iter().collect();
        let backends: BTreeMap<u32, _> = store.list_backends(family)?.into_iter().collect();
        for (key, master) in entries.iter().filter(|(k, _)| k.slot() == 0) {
            let Some(proto) = L4Proto::from_number(key.proto()) else {
                continue;
            };
            let frontend = FrontendKey {
                addr: key.addr(),
                port: key.port(),
                proto,
                scope: key.scope(),
            };
            let slots = (1..=master.count.min(u32::from(u16::MAX)) as u16)
                .map(|slot| {
                    let s = entries
                        .get(&key.with_slot(slot))
                        .ok_or_else(|| format!("slot {slot} missing"))?;
                    let b = backends.get(&s.backend_id).ok_or_else(|| {
                        format!("slot {slot}: backend id {} missing", s.backend_id)
                    })?;
                    Ok(BackendSpec {
                        addr: SocketAddr::new(b.addr(), b.port()),
                        state: b.state(),
                        local: b.flags() & BACKEND_FLAG_LOCAL != 0,
                    })
                })
                .collect();
            out.insert(
                frontend,
                Actual {
                    service_id: master.service_id,
                    flags: master.flags,
                    affinity_timeout_s: master.affinity_timeout_s,
                    slots,
                    name: names.get(&master.service_id).copied(),
                    source_ranges: {
                        let mut r = ranges.remove(&master.service_id).unwrap_or_default();
                        r.sort_unstable();
                        r
                    },
                },
            );
        }
    }
    Ok(out)
}

fn frontend_text(key: &FrontendKey) -> String {
    let mut s = format!(
        "{}/{}",
        SocketAddr::new(key.addr, key.port),
        proto_name(key.proto.number())
    );
    if key.scope != 0 {
        s.push_str(&format!(" scope {}", key.scope));
    }
    s
}

fn state_name(state: u8) -> &'static str {
    use service_lb_common::service::{
        BACKEND_STATE_ACTIVE, BACKEND_STATE_DRAINING, BACKEND_STATE_TERMINATING,
    };
    match state {
        BACKEND_STATE_ACTIVE => "active",
        BACKEND_STATE_TERMINATING => "terminating",
        BACKEND_STATE_DRAINING => "draining",
        _ => "unknown",
    }
}

fn backend_text(b: &BackendSpec) -> String {
    let mut s = format!("{} {}", b.addr, state_name(b.state));
    if b.local {
        s.push_str(" local");
    }
    s
}

/// What differs between a wanted frontend and the maps' one (empty when equal).
pub fn compare(want: &FrontendSpec, have: &Actual) -> Vec<String> {
    let mut details = Vec::new();
    if want.flags != have.flags {
        details.push(format!(
            "flags: maps {}, wanted {}",
            flag_names(have.flags),
            flag_names(want.flags)
        ));
    }
    if want.source_ranges != have.source_ranges {
        let list = |v: &[Cidr]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        details.push(format!(
            "source ranges: maps [{}], wanted [{}]",
            list(&have.source_ranges),
            list(&want.source_ranges)
        ));
    }
    if want.affinity_timeout_s != have.affinity_timeout_s {
        details.push(format!(
            "affinity timeout: maps {} s, wanted {} s",
            have.affinity_timeout_s, want.affinity_timeout_s
        ));
    }
    let mut read = Vec::new();
    for slot in &have.slots {
        match slot {
            Ok(b) => read.push(*b),
            Err(e) => details.push(e.clone()),
        }
    }
    let by_addr = |list: &[BackendSpec]| -> BTreeMap<SocketAddr, BackendSpec> {
        list.iter().map(|b| (b.addr, *b)).collect()
    };
    let (w, h) = (by_addr(&want.backends), by_addr(&read));
    for (addr, b) in &w {
        match h.get(addr) {
            None => details.push(format!("backend {} missing", backend_text(b))),
            Some(hb) if hb != b => details.push(format!(
                "backend {addr}: maps {}, wanted {}",
                backend_text(hb),
                backend_text(b)
            )),
            Some(_) => {}
        }
    }
    for (addr, b) in &h {
        if !w.contains_key(addr) {
            details.push(format!("backend {} extra", backend_text(b)));
        }
    }
    let want_order: Vec<SocketAddr> = want.backends.iter().map(|b| b.addr).collect();
    let have_order: Vec<SocketAddr> = read.iter().map(|b| b.addr).collect();
    if details.is_empty() && want_order != have_order {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        details.push(format!(
            "slots: maps [{}], wanted [{}]",
            list(&have_order),
            list(&want_order)
        ));
    }
    details
}

/// The differences between the desired state of every Service and the maps' frontends,
/// sorted by Service then frontend.
pub fn diff(desired: &[ServiceDesired], actual: &BTreeMap<FrontendKey, Actual>) -> Vec<DiffRow> {
    let mut rows = Vec::new();
    let mut wanted: BTreeSet<FrontendKey> = BTreeSet::new();
    for d in desired {
        for spec in specs_of(d).into_values() {
            // Two Services wanting one frontend: the first keeps it (as the daemon).
            if !wanted.insert(spec.key) {
                continue;
            }
            let (change, details) = match actual.get(&spec.key) {
                None => (
                    Change::Missing,
                    vec![format!(
                        "wanted with {} backend(s): {}",
                        spec.backends.len(),
                        spec.backends
                            .iter()
                            .map(backend_text)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )],
                ),
                Some(have) => {
                    let details = compare(&spec, have);
                    if details.is_empty() {
                        continue;
                    }
                    (Change::Different, details)
                }
            };
            rows.push(DiffRow {
                service: d.name.to_string(),
                frontend: frontend_text(&spec.key),
                change,
                details,
            });
        }
    }
    for (key, have) in actual.iter().filter(|(k, _)| !wanted.contains(k)) {
        let service = have
            .name
            .map(|n| format!("{}/{}", n.namespace(), n.name()))
            .unwrap_or_else(|| "-".to_owned());
        rows.push(DiffRow {
            service,
            frontend: frontend_text(key),
            change: Change::Extra,
            details: vec![format!(
                "service id {} with {} slot(s)",
                have.service_id,
                have.slots.len()
            )],
        });
    }
    rows.sort();
    rows
}

/// Reads the source until its first complete list of Services and EndpointSlices (and
/// the Node, if the source has it quickly), then stops it; returns every Service's
/// desired state for `node`.
pub async fn desired_from(
    source: SourceChoice,
    node: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<ServiceDesired>> {
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(4096);
    let cancel = CancellationToken::new();
    let what = source.describe();
    let task = {
        let cancel = cancel.clone();
        let node = Some(node.to_owned());
        tokio::spawn(async move {
            match source {
                SourceChoice::Kube(kubeconfig) => {
                    source::kube_api::run(
                        KubeSourceConfig {
                            kubeconfig,
                            node_name: node,
                            // diff compares Services only.
                            network_policy: false,
                        },
                        tx,
                        cancel,
                    )
                    .await
                }
                SourceChoice::Manifests(dir) => {
                    source::manifests::run(
                        ManifestsConfig {
                            dir,
                            node_name: node,
                            debounce: Duration::from_millis(100),
                        },
                        tx,
                        cancel,
                    )
                    .await
                }
            }
        })
    };
    let mut state = ClusterState::new(Some(node.to_owned()));
    let deadline = tokio::time::Instant::now() + timeout;
    let result = loop {
        if state.synced() {
            break Ok(());
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => {
                break Err(anyhow::anyhow!(
                    "{what}: no complete list within {timeout:?}"
                ))
            }
            Ok(None) => break Err(anyhow::anyhow!("{what}: the source ended before listing")),
            Ok(Some(event)) => match event {
                SourceEvent::Service(e) => state.apply_service(*e),
                SourceEvent::EndpointSlice(e) => state.apply_endpoint_slice(*e),
                SourceEvent::Node(e) => state.apply_node(*e),
                SourceEvent::Rejected(r) => {
                    tracing::warn!(origin = %r.origin, reason = r.reason, detail = %r.detail, "input rejected")
                }
                // Not part of the frontends and backends diff compares.
                SourceEvent::ServiceCidr(_)
                | SourceEvent::Pod(_)
                | SourceEvent::Namespace(_)
                | SourceEvent::NetworkPolicy(_) => {}
            },
        }
    };
    cancel.cancel();
    drop(rx);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Err(e))) if result.is_err() => return Err(e.context(what)),
        _ => {}
    }
    result?;
    let mut names: Vec<ServiceName> = state.service_names();
    names.sort();
    Ok(names.iter().map(|n| state.desired(n)).collect())
}

/// Where the desired state comes from.
#[derive(Clone, Debug)]
pub enum SourceChoice {
    Kube(Option<PathBuf>),
    Manifests(PathBuf),
}

impl SourceChoice {
    fn describe(&self) -> String {
        match self {
            Self::Kube(Some(p)) => format!("Kubernetes API (kubeconfig {})", p.display()),
            Self::Kube(None) => "Kubernetes API".into(),
            Self::Manifests(dir) => format!("manifests folder {}", dir.display()),
        }
    }
}

fn node_name(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(n) = flag.filter(|n| !n.is_empty()) {
        return Ok(n.to_owned());
    }
    // The UTS name of this process (what `hostname` prints), as `run` falls back to.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("no --node, no $NODE_NAME and no host name")?;
    Ok(host.trim().to_lowercase())
}

/// Runs the command: prints the differences, returns whether there were any.
pub fn run(args: &DiffArgs) -> anyhow::Result<Outcome> {
    let node = node_name(args.node.as_deref())?;
    if !pin::maps_dir(&args.bpffs).is_dir() {
        bail!(
            "no data plane is pinned under {} (is the daemon installed? is --bpffs right?)",
            args.bpffs.display()
        );
    }
    let source = match &args.manifests {
        Some(dir) => SourceChoice::Manifests(dir.clone()),
        None => SourceChoice::Kube(args.kubeconfig.clone()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let desired = runtime.block_on(desired_from(source, &node, args.timeout))?;
    let rows = diff_pinned(&args.bpffs, &desired)?;
    if rows.is_empty() && args.output == Format::Table {
        output::print(&format!(
            "equal: {} Service(s), their frontends and backends are what the maps hold",
            desired.len()
        ))?;
    } else {
        output::print(&output::render(&rows, args.output)?)?;
    }
    Ok(if rows.is_empty() {
        Outcome::Equal
    } else {
        Outcome::Differ
    })
}

/// The differences between `desired` and the maps pinned under `bpffs`.
pub fn diff_pinned(bpffs: &Path, desired: &[ServiceDesired]) -> anyhow::Result<Vec<DiffRow>> {
    let maps = BpfMaps::open_pinned(bpffs)
        .with_context(|| format!("opening the pinned maps under {}", bpffs.display()))?;
    Ok(diff(desired, &actual(&maps)?))
}

#[cfg(test)]
mod tests;
