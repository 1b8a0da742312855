//! Driving service-lb on a test node: load + attach inside the node's namespace, program
//! frontends through the pinned maps, read the counters back.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use anyhow::{Context, Result};
use service_lb::dataplane::{
    Attachment, BackendSpec, BpfMaps, Dataplane, DataplaneOptions, Family, FrontendKey,
    FrontendSpec, L4Proto, MapSizes, MapStore, ServiceWriter,
};
use service_lb_common::hairpin::HairpinConfig;
use service_lb_common::service::{BACKEND_STATE_ACTIVE, SCOPE_EXTERNAL, SVC_FLAG_CLUSTER_IP};

use crate::netns::run_in;
use crate::topology::{Node, POD_VETH_GLOB, TEST_HAIRPIN_IPV4, TEST_HAIRPIN_IPV6, UNDERLAY_DEV};

/// Map sizes for a test node: small, so a test loads quickly and uses little memory.
pub fn test_map_sizes() -> MapSizes {
    MapSizes {
        services: 1024,
        backends: 1024,
        revnat: 256,
        ct_tcp: 16_384,
        ct_any: 16_384,
        policy_pods: 1024,
        policy_peers: 16_384,
        policy_ports: 4096,
        policy_flows: 16_384,
    }
}

/// Loads the data plane with its maps pinned in the node's bpffs folder and attaches it
/// to the node's pod veths and underlay device, from a thread inside the node's
/// namespace. The links are pinned, so they outlive the loader.
pub fn install(node: &Node) -> Result<Vec<Attachment>> {
    let options = DataplaneOptions {
        bpffs: node.bpffs.path().to_path_buf(),
        sizes: test_map_sizes(),
        hairpin: HairpinConfig {
            v4: TEST_HAIRPIN_IPV4.octets(),
            v6: TEST_HAIRPIN_IPV6.octets(),
        },
        ..DataplaneOptions::default()
    };
    run_in(&node.ns, || {
        let mut dataplane = Dataplane::open(&options).context("loading service-lb")?;
        dataplane
            .attach(&[POD_VETH_GLOB.to_owned()], &[UNDERLAY_DEV.to_owned()])
            .context("attaching service-lb")
    })
    .with_context(|| format!("installing service-lb on node {}", node.name))
}

/// One backend of a frontend, and the node it runs on.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub node: u8,
}

/// A ClusterIP frontend and its endpoints.
#[derive(Clone, Debug)]
pub struct ClusterIp {
    pub vip: SocketAddr,
    pub proto: L4Proto,
    pub endpoints: Vec<Endpoint>,
}

impl ClusterIp {
    pub fn key(&self) -> FrontendKey {
        FrontendKey {
            addr: self.vip.ip(),
            port: self.vip.port(),
            proto: self.proto,
            scope: SCOPE_EXTERNAL,
        }
    }

    /// The frontend as programmed on `node` (the local flag differs per node).
    fn spec_for(&self, node: u8) -> FrontendSpec {
        let backends = self
            .endpoints
            .iter()
            .map(|e| BackendSpec {
                addr: e.addr,
                state: BACKEND_STATE_ACTIVE,
                local: e.node == node,
            })
            .collect();
        FrontendSpec {
            key: self.key(),
            backends,
            flags: SVC_FLAG_CLUSTER_IP,
            affinity_timeout_s: 0,
            source_ranges: Vec::new(),
        }
    }
}

/// Creates or updates `services` in the node's pinned maps. Like the daemon (and
/// kube-proxy), it then flushes the UDP conntrack entries of each UDP frontend whose
/// backend is no longer one of its endpoints; TCP entries are never flushed (a backend
/// that leaves every frontend drains: its established connections go on). Returns how
/// many entries were flushed.
pub fn program(node: &Node, services: &[ClusterIp]) -> Result<usize> {
    let maps = BpfMaps::open_pinned(node.bpffs.path())
        .with_context(|| format!("opening the pinned maps of node {}", node.name))?;
    let mut writer = ServiceWriter::open(maps).context("reading the programmed services")?;
    let mut serving: BTreeMap<Family, BTreeMap<u32, BTreeSet<u32>>> = BTreeMap::new();
    for service in services {
        let ids = writer
            .upsert(&service.spec_for(node.index))
            .with_context(|| format!("programming {} on node {}", service.key(), node.name))?;
        if service.proto == L4Proto::Udp && !ids.backend_ids.is_empty() {
            serving
                .entry(service.key().family())
                .or_default()
                .insert(ids.service_id, ids.backend_ids.into_iter().collect());
        }
    }
    let mut flushed = 0;
    for (family, rules) in serving {
        flushed += writer
            .store_mut()
            .flush_udp_conntrack(family, &rules)
            .with_context(|| format!("flushing UDP conntrack on node {}", node.name))?;
    }
    Ok(flushed)
}

/// Every counter of the node's data path, summed over CPUs.
pub fn counters(node: &Node) -> Result<Vec<service_lb::dataplane::CounterTotal>> {
    let maps = BpfMaps::open_pinned(node.bpffs.path())
        .with_context(|| format!("opening the pinned maps of node {}", node.name))?;
    maps.counters()
        .with_context(|| format!("reading the counters of node {}", node.name))
}

/// `service-lb inspect services` of a node, rendered as the CLI renders it: the data
/// path's own view, read back from the pinned maps.
pub fn inspect_services(node: &Node) -> Result<String> {
    let maps = BpfMaps::open_pinned(node.bpffs.path())
        .with_context(|| format!("opening the pinned maps of node {}", node.name))?;
    let rows = service_lb::cli::inspect::services::rows(&maps)
        .with_context(|| format!("reading the services maps of node {}", node.name))?;
    service_lb::cli::output::render(&rows, service_lb::cli::output::Format::Table)
}
