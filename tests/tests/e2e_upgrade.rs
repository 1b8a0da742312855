//! Upgrade and downgrade under load (issue 13 item 6), with real binaries: the previous
//! release's daemon (a commit, built once into `target/prev-release/`, see
//! `service_lb_tests::journey::prev_release`) and this tree's, switched on the same pins
//! as a DaemonSet rollout does (stop the old pod, start the new one), then back.
//!
//! One node `n1`, pods `client`, `b1`, `b2`; Service `web` 198.19.0.10 / fd00:19::10,
//! 80/TCP -> 8080 and 53/UDP -> 5353 on b1 and b2. Load throughout: new TCP connections,
//! UDP queries, and long-lived streams opened under each version. Zero failures both
//! ways; conntrack maps must be the same kernel objects before and after (flows keep
//! their backend because their entries are kept, not because of luck).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use aya::maps::MapData;
use service_lb_common::maps;
use service_lb_tests::daemon::{
    Daemon, DaemonOptions, EndpointSpec, ManifestDir, PortSpec, ServiceManifest, SliceManifest,
};
use service_lb_tests::journey::prev_release;
use service_lb_tests::load::{under_load, Running, Targets};
use service_lb_tests::netns::sweep_leftovers;
use service_lb_tests::privileges::require_root;
use service_lb_tests::servers::Servers;
use service_lb_tests::topology::{Cluster, ClusterSpec};

const WEB4: &str = "198.19.0.10";
const WEB6: &str = "fd00:19::10";
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
const UDP_PORT: u16 = 53;
const UDP_TARGET: u16 = 5353;
const BACKENDS: [&str; 2] = ["b1", "b2"];
const READY_BOUND: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_millis(1500);
const STREAMS: usize = 3;
/// Conntrack maps whose entries must survive both switches.
const CONNTRACK: [&str; 4] = [maps::CT4_TCP, maps::CT4_ANY, maps::CT6_TCP, maps::CT6_ANY];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a literal address")
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn write_manifests(cluster: &Cluster, manifests: &ManifestDir) -> Result<()> {
    let web = ServiceManifest {
        namespace: "default".into(),
        name: "web".into(),
        cluster_ips: vec![ip(WEB4), ip(WEB6)],
        ports: vec![
            (PortSpec::new("http", TCP_PORT, "TCP"), TCP_TARGET),
            (PortSpec::new("dns", UDP_PORT, "UDP"), UDP_TARGET),
        ],
    };
    manifests.write("web-service.yaml", &web.yaml())?;
    let mut docs = Vec::new();
    for v6 in [false, true] {
        let endpoints = BACKENDS
            .iter()
            .map(|name| {
                Ok(EndpointSpec {
                    addr: cluster.pod(name)?.addr(v6),
                    node: "n1".into(),
                    ready: true,
                    terminating: false,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        docs.push(
            SliceManifest {
                namespace: "default".into(),
                name: format!("web-{}", if v6 { "v6" } else { "v4" }),
                service: "web".into(),
                ipv6: v6,
                ports: vec![
                    PortSpec::new("http", TCP_TARGET, "TCP"),
                    PortSpec::new("dns", UDP_TARGET, "UDP"),
                ],
                endpoints,
                trigger_time: None,
            }
            .yaml(),
        );
    }
    manifests.write("web-slices.yaml", &docs.join("---\n"))
}

/// Kernel ids of the pinned conntrack maps (the same ids = the same maps, entries kept).
fn conntrack_ids(bpffs: &Path) -> Result<BTreeMap<&'static str, u32>> {
    CONNTRACK
        .iter()
        .map(|name| {
            let path = bpffs.join("maps").join(name);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            let id = data.info().with_context(|| format!("info of {name}"))?.id();
            Ok((*name, id))
        })
        .collect()
}

/// The names pinned under `<bpffs>/maps`.
fn pinned_maps(bpffs: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(bpffs.join("maps"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Stops `running` (SIGTERM, as kubelet does) and starts `binary` on the same pins.
fn switch(
    load: &Running,
    what: &str,
    running: &mut Option<Daemon>,
    node_ns: &service_lb_tests::netns::NetNs,
    options: &DaemonOptions,
    binary: &Path,
) -> Result<Duration> {
    load.step(what);
    let started = Instant::now();
    let mut old = running.take().context("no daemon running")?;
    let status = old.stop()?;
    eprintln!("{what}: the old daemon exited ({status})");
    let mut new = Daemon::start_binary(node_ns, options.clone(), binary)?;
    new.wait_ready(READY_BOUND)?;
    *running = Some(new);
    Ok(started.elapsed())
}

#[test]
fn e2e_upgrade_and_downgrade_under_load() -> Result<()> {
    if !require_root("e2e_upgrade_and_downgrade_under_load") {
        return Ok(());
    }
    let commit = prev_release::previous_commit()?;
    let previous = prev_release::binary(&commit)?;
    let current: PathBuf = service_lb_tests::daemon::service_lb_binary()?;

    sweep_leftovers();
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client", "b1", "b2"]]))
        .context("building the topology")?;
    let manifests = ManifestDir::create(cluster.prefix())?;
    let mut _servers = Vec::new();
    for name in BACKENDS {
        let pod = cluster.pod(name)?;
        _servers.push(Servers::start(
            &pod.ns,
            name,
            &[sa(pod.v4.into(), TCP_TARGET), sa(pod.v6.into(), TCP_TARGET)],
            &[sa(pod.v4.into(), UDP_TARGET), sa(pod.v6.into(), UDP_TARGET)],
        )?);
    }
    write_manifests(&cluster, &manifests)?;
    let node = cluster.node(1)?;
    let options = DaemonOptions::for_node(
        node.bpffs.path(),
        manifests.path(),
        "n1",
        manifests.log_path("n1"),
    );
    let bpffs = options.bpffs.clone();
    let mut old = Daemon::start_binary(&node.ns, options.clone(), &previous)?;
    old.wait_ready(READY_BOUND)
        .with_context(|| format!("the previous release {commit}"))?;
    // Dropped (killed) before the cluster's pins and namespaces go.
    let mut running: Option<Daemon> = Some(old);
    let pins_old = pinned_maps(&bpffs)?;
    let ids_old = conntrack_ids(&bpffs)?;
    eprintln!("previous release {commit} pinned: {pins_old:?}");

    let client = &cluster.pod("client")?.ns;
    let targets = Targets {
        tcp: vec![sa(ip(WEB4), TCP_PORT), sa(ip(WEB6), TCP_PORT)],
        udp: vec![sa(ip(WEB4), UDP_PORT), sa(ip(WEB6), UDP_PORT)],
    };
    let mut took = (Duration::ZERO, Duration::ZERO);
    let mut pins_new = Vec::new();
    let mut ids_new = BTreeMap::new();
    let counts = under_load(client, &targets, Vec::new(), |load| -> Result<()> {
        load.step("previous release running");
        load.open_streams(&targets.tcp, STREAMS, "opened under the previous release")?;
        std::thread::sleep(STEP);
        took.0 = switch(
            load,
            "upgrade: previous release stopped, this one started",
            &mut running,
            &node.ns,
            &options,
            &current,
        )?;
        pins_new = pinned_maps(&bpffs)?;
        ids_new = conntrack_ids(&bpffs)?;
        load.open_streams(&targets.tcp, STREAMS, "opened under this release")?;
        std::thread::sleep(STEP);
        took.1 = switch(
            load,
            "downgrade: this release stopped, the previous one started",
            &mut running,
            &node.ns,
            &options,
            &previous,
        )?;
        load.open_streams(&targets.tcp, STREAMS, "opened after the downgrade")?;
        std::thread::sleep(STEP);
        load.step("done");
        Ok(())
    })?;
    let ids_back = conntrack_ids(&bpffs)?;

    eprintln!(
        "MEASURED upgrade {commit} -> this tree -> {commit} under load: {}",
        counts.summary()
    );
    eprintln!(
        "MEASURED switch times (stop + start + ready): upgrade {:?}, downgrade {:?}",
        took.0, took.1
    );
    eprintln!("this release pinned: {pins_new:?}");
    ensure!(
        counts.total_failed() == 0,
        "failures across the upgrade/downgrade ({}):\n{}",
        counts.summary(),
        counts.errors().join("\n")
    );
    ensure!(
        counts.pings_ok.load(Ordering::Relaxed) > 100,
        "too few pings to mean anything"
    );
    ensure!(
        counts.tcp_ok.load(Ordering::Relaxed) > 40,
        "too little load to mean anything"
    );
    ensure!(
        ids_old == ids_new && ids_new == ids_back,
        "the conntrack maps were replaced: {ids_old:?} -> {ids_new:?} -> {ids_back:?}"
    );
    if let Some(mut daemon) = running.take() {
        ensure!(
            daemon.exited()?.is_none(),
            "the previous release's daemon exited after the downgrade; log:\n{}",
            daemon.log_tail(40)
        );
    }
    Ok(())
}
