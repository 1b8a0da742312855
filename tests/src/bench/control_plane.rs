//! The real daemon on a test node: a manifests folder of N services x 10 endpoints ->
//! time until it is ready after its first full sync (every entry then checked in the
//! services map); its RSS and BPF map memory then; and
//! the latency of single EndpointSlice changes to the map.

use std::{
    net::SocketAddrV4,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use aya::maps::{HashMap, Map, MapData};
use service_lb_common::{maps, proto::IPPROTO_TCP, service::SCOPE_EXTERNAL, Svc4Key, SvcValue};

use super::{
    config::{self, BACKENDS_PER_SERVICE},
    per_packet::ServiceSet,
    process_memory,
};
use crate::{
    daemon::{
        Daemon, DaemonOptions, EndpointSpec, ManifestDir, PortSpec, ServiceManifest, SliceManifest,
    },
    topology::{Cluster, ClusterSpec},
};

/// Services per manifests file.
const SERVICES_PER_FILE: u32 = 1_000;
const NODE_NAME: &str = "n1";
/// The service whose slice the change test rewrites: in a file of its own.
const CHANGED_SERVICE: u32 = 0;
const CHANGED_FILE: &str = "changed-slice.yaml";
const POLL: Duration = Duration::from_millis(1);
/// Bound on one change reaching the map.
const CHANGE_BOUND: Duration = Duration::from_secs(10);

/// Figures of one daemon run with N services.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRow {
    pub services: u32,
    /// Daemon started -> ready after its first full sync (the services map then holds
    /// N x 11 entries, checked).
    pub sync: Duration,
    /// CPU time the daemon used until ready (user + system).
    pub sync_cpu: Duration,
    pub rss_kib: u64,
    pub map_memlock_bytes: u64,
    /// `memlock` of each pinned map the daemon holds (pin name, bytes), largest first.
    pub per_map: Vec<(String, u64)>,
    /// Change -> map latencies, sorted, when changes were asked for.
    pub changes: Vec<Duration>,
}

/// Runs the daemon with `services` services; then `changes` slice changes (0 for none).
/// `bound` limits the initial sync.
pub fn measure(services: u32, changes: u32, bound: Duration) -> anyhow::Result<SyncRow> {
    ensure!(services > 0, "no services");
    let set = ServiceSet { services };
    // Field order of the locals = reverse drop order: daemon, manifests, cluster.
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client"]])).context("building the node")?;
    let manifests = ManifestDir::create(cluster.prefix())?;
    write_manifests(&manifests, set)?;
    let node = cluster.node(1)?;
    let mut options = DaemonOptions::for_node(
        node.bpffs.path(),
        manifests.path(),
        NODE_NAME,
        manifests.log_path(NODE_NAME),
    );
    options.extra_args = config::daemon_map_args(services, 16384);
    let expected = u64::from(services) * u64::from(BACKENDS_PER_SERVICE + 1);
    // Built (if needed) before the clock starts.
    crate::daemon::service_lb_binary()?;
    let started = Instant::now();
    let mut daemon = Daemon::start(&node.ns, options)?;
    let pid = daemon.pid().context("daemon without pid")?;
    // Ready = programs attached and the first full sync done. Polling the health port is
    // cheap; counting a map of a million entries while the daemon writes it would steal
    // the CPU being measured.
    daemon.wait_ready(bound)?;
    let sync = started.elapsed();
    let sync_cpu = process_memory::cpu_time(pid)?;
    let services_map = open_services_map(node.bpffs.path())?;
    let held = services_map.keys().filter(|k| k.is_ok()).count() as u64;
    ensure!(
        held == expected,
        "ready with {held} of {expected} service entries:\n{}",
        daemon.log_tail(30)
    );
    let rss_kib = process_memory::rss_kib(pid)?;
    let map_memlock_bytes = process_memory::bpf_map_memlock_bytes(pid)?;
    let per_map = per_map_memlock(pid, &node.bpffs.path().join("maps"))?;

    let mut latencies = Vec::new();
    for i in 0..changes {
        // Alternate 9 and 10 endpoints: the master entry's count says which is live.
        let endpoints = BACKENDS_PER_SERVICE - (i + 1) % 2;
        let written = Instant::now();
        manifests.write(CHANGED_FILE, &slice(set, CHANGED_SERVICE, endpoints).yaml())?;
        loop {
            if master_count(&services_map, set.vip(CHANGED_SERVICE)) == Some(endpoints) {
                latencies.push(written.elapsed());
                break;
            }
            if written.elapsed() > CHANGE_BOUND {
                bail!("change {i} not in the map after {CHANGE_BOUND:?}");
            }
            std::thread::sleep(POLL);
        }
    }
    latencies.sort();
    let _ = daemon.stop();
    drop(daemon);
    drop(manifests);
    drop(cluster);
    Ok(SyncRow {
        services,
        sync,
        sync_cpu,
        rss_kib,
        map_memlock_bytes,
        per_map,
        changes: latencies,
    })
}

/// The API source's change -> map latency: the daemon (`--kubeconfig`) against the fake
/// API server of the tests crate, serving N Services x 10 endpoints, listening on the node
/// namespace's loopback; then `changes` EndpointSlice updates (9 and 10 endpoints in
/// turn), each timed from the server's write (the watch event goes out at once) until
/// the master entry in the pinned map shows the new count. Returns the sorted latencies.
pub fn measure_api(services: u32, changes: u32, bound: Duration) -> anyhow::Result<Vec<Duration>> {
    use crate::fake_apiserver::FakeApiServer;
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use service_lb::source::manifests::parse::{parse_file, Object};

    ensure!(services > 0, "no services");
    let set = ServiceSet { services };
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client"]])).context("building the node")?;
    let manifests = ManifestDir::create(cluster.prefix())?;
    let node = cluster.node(1)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Bound inside the node's namespace: the daemon there reaches it on its loopback.
    let server = crate::netns::run_in(&node.ns, || rt.block_on(FakeApiServer::start()))?;
    let objects = |yaml: &str| -> anyhow::Result<Vec<Object>> {
        Ok(parse_file(yaml, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .objects)
    };
    let apply = |yaml: &str| -> anyhow::Result<()> {
        for object in objects(yaml)? {
            match object {
                Object::Service(s) => {
                    server.apply::<Service>(&s)?;
                }
                Object::EndpointSlice(s) => {
                    server.apply::<EndpointSlice>(&s)?;
                }
                _ => {}
            }
        }
        Ok(())
    };
    for i in 0..services {
        apply(&service(set, i).yaml())?;
        apply(&slice(set, i, BACKENDS_PER_SERVICE).yaml())?;
    }
    let kubeconfig = server.write_kubeconfig(manifests.path())?;
    let mut options = DaemonOptions::for_node(
        node.bpffs.path(),
        manifests.path(),
        NODE_NAME,
        manifests.log_path(NODE_NAME),
    );
    options.kubeconfig = Some(kubeconfig);
    options.extra_args = config::daemon_map_args(services, 16384);
    options.extra_args.push("--network-policy=off".into());
    crate::daemon::service_lb_binary()?;
    let mut daemon = Daemon::start(&node.ns, options)?;
    daemon.wait_ready(bound)?;
    let services_map = open_services_map(node.bpffs.path())?;
    let mut latencies = Vec::new();
    for i in 0..changes {
        let endpoints = BACKENDS_PER_SERVICE - (i + 1) % 2;
        let yaml = slice(set, CHANGED_SERVICE, endpoints).yaml();
        let parsed = objects(&yaml)?;
        let written = Instant::now();
        for object in &parsed {
            if let Object::EndpointSlice(s) = object {
                server.apply::<EndpointSlice>(s)?;
            }
        }
        loop {
            if master_count(&services_map, set.vip(CHANGED_SERVICE)) == Some(endpoints) {
                latencies.push(written.elapsed());
                break;
            }
            if written.elapsed() > CHANGE_BOUND {
                bail!(
                    "change {i} not in the map after {CHANGE_BOUND:?}:\n{}",
                    daemon.log_tail(20)
                );
            }
            std::thread::sleep(POLL);
        }
    }
    latencies.sort();
    let _ = daemon.stop();
    drop(daemon);
    drop(server);
    drop(rt);
    drop(manifests);
    drop(cluster);
    Ok(latencies)
}

/// `memlock` of each map pinned in `maps_dir` that `pid` holds (by map id), largest first.
fn per_map_memlock(pid: u32, maps_dir: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let by_id = process_memory::bpf_map_memlock_by_id(pid)?;
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(maps_dir).with_context(|| format!("listing {}", maps_dir.display()))?
    {
        let entry = entry?;
        let Ok(info) = aya::maps::MapInfo::from_pin(entry.path()) else {
            continue;
        };
        if let Some(memlock) = by_id.get(&u64::from(info.id())) {
            out.push((entry.file_name().to_string_lossy().into_owned(), *memlock));
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}

/// The `q` quantile (0..=1) of sorted durations, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn open_services_map(bpffs: &Path) -> anyhow::Result<HashMap<MapData, Svc4Key, SvcValue>> {
    let pin = bpffs.join("maps").join(maps::SERVICES4);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    Ok(HashMap::try_from(Map::HashMap(data))?)
}

fn master_count(map: &HashMap<MapData, Svc4Key, SvcValue>, vip: SocketAddrV4) -> Option<u32> {
    let key = Svc4Key::new(
        vip.ip().octets(),
        vip.port().to_be(),
        IPPROTO_TCP,
        SCOPE_EXTERNAL,
        0,
    );
    map.get(&key, 0).ok().map(|v| v.count)
}

fn service(set: ServiceSet, i: u32) -> ServiceManifest {
    let vip = set.vip(i);
    ServiceManifest {
        namespace: "bench".into(),
        name: format!("svc{i}"),
        cluster_ips: vec![(*vip.ip()).into()],
        ports: vec![(
            PortSpec::new("http", vip.port(), "TCP"),
            set.backend(i, 0).1.port(),
        )],
    }
}

fn slice(set: ServiceSet, i: u32, endpoints: u32) -> SliceManifest {
    SliceManifest {
        namespace: "bench".into(),
        name: format!("svc{i}-v4"),
        service: format!("svc{i}"),
        ipv6: false,
        ports: vec![PortSpec::new("http", set.backend(i, 0).1.port(), "TCP")],
        endpoints: (0..endpoints)
            .map(|slot| EndpointSpec {
                addr: (*set.backend(i, slot).1.ip()).into(),
                node: NODE_NAME.into(),
                ready: true,
                terminating: false,
            })
            .collect(),
        trigger_time: None,
    }
}

/// Files of `SERVICES_PER_FILE` services (Service + EndpointSlice documents); the slice
/// of `CHANGED_SERVICE` in a file of its own.
fn write_manifests(dir: &ManifestDir, set: ServiceSet) -> anyhow::Result<()> {
    let mut file = String::new();
    for i in 0..set.services {
        file.push_str("---\n");
        file.push_str(&service(set, i).yaml());
        let slice_yaml = slice(set, i, BACKENDS_PER_SERVICE).yaml();
        if i == CHANGED_SERVICE {
            dir.write(CHANGED_FILE, &slice_yaml)?;
        } else {
            file.push_str("---\n");
            file.push_str(&slice_yaml);
        }
        if (i + 1) % SERVICES_PER_FILE == 0 || i + 1 == set.services {
            dir.write(
                &format!("services-{:06}.yaml", i / SERVICES_PER_FILE),
                &file,
            )?;
            file.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&sorted, 0.5), Some(ms(50)));
        assert_eq!(quantile(&sorted, 0.99), Some(ms(99)));
        assert_eq!(quantile(&sorted, 1.0), Some(ms(100)));
        assert_eq!(quantile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
