//! Sync time of one UDP endpoint change with a large conntrack table (issue 14, item 4):
//! the daemon's own `Syncer` on the real maps (loaded and pinned in a bpffs folder of
//! this run; nothing is attached, no packet is sent), the non-TCP conntrack map filled
//! with N entries of the changed frontend's flows, then one endpoint of that frontend's
//! 10 stops serving and `Syncer::apply` is timed.
//!
//! Two cases, both of the current code:
//! - the endpoint leaves every slot (the usual case: the Service's frontends all drop
//!   it): its backend entry is deleted and the kernel re-balances its flows; no
//!   conntrack pass;
//! - the endpoint is still in a slot of another Service (same address, port and
//!   protocol): a pass over the whole UDP conntrack map, which is what every UDP
//!   endpoint change cost before.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::maps::{HashMap, Map, MapData};
use service_lb::{
    dataplane::{
        pin, BpfMaps, Dataplane, DataplaneOptions, FrontendKey, L4Proto, MapSizes, ServiceWriter,
        Syncer,
    },
    model::{DesiredBackend, DesiredFrontend, Protocol, Scope, ServiceDesired, ServiceName},
};
use service_lb_common::{
    conntrack::{CtEntry, CtKey4, CT_DIR_SERVICE},
    maps,
    proto::IPPROTO_UDP,
    service::SCOPE_EXTERNAL,
};

use super::config::BACKENDS_PER_SERVICE;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 53);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 54);
const PORT: u16 = 53;

/// One measured change.
#[derive(Debug, Clone, PartialEq)]
pub struct CtCleanupRow {
    pub case: &'static str,
    pub conntrack_entries: u32,
    pub sync: Duration,
    pub flushed: usize,
    pub backends_retired: usize,
}

/// A bpffs folder of this run; the data plane's pins are removed on drop.
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        if let Err(e) = service_lb::dataplane::cleanup(&self.0) {
            eprintln!("warning: cleaning up {}: {e:#}", self.0.display());
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn backend(i: u32) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(198, 18, 0, 2 + i as u8),
        PORT,
    ))
}

fn frontend(vip: Ipv4Addr, backends: &[SocketAddr]) -> DesiredFrontend {
    DesiredFrontend {
        addr: vip.into(),
        port: PORT,
        protocol: Protocol::Udp,
        scope: Scope::External,
        port_name: String::new(),
        backends: backends
            .iter()
            .map(|addr| DesiredBackend {
                addr: *addr,
                terminating: false,
                local: false,
            })
            .collect(),
        serving: backends.to_vec(),
        affinity_timeout_s: 0,
        no_endpoints: Default::default(),
    }
}

fn service(name: &str, frontends: Vec<DesiredFrontend>) -> ServiceDesired {
    ServiceDesired {
        name: ServiceName {
            namespace: "bench".into(),
            name: name.into(),
        },
        frontends,
        external: vec![],
        health_check: None,
        skipped: vec![],
        last_change_trigger_time: None,
    }
}

/// Both cases with `entries` UDP conntrack entries (forward direction, spread over the
/// frontend's 10 backends).
pub fn measure(entries: u32) -> anyhow::Result<Vec<CtCleanupRow>> {
    let mut rows = Vec::new();
    for shared in [false, true] {
        rows.push(
            measure_case(entries, shared)
                .with_context(|| format!("UDP endpoint change, shared backend: {shared}"))?,
        );
    }
    Ok(rows)
}

fn measure_case(entries: u32, shared: bool) -> anyhow::Result<CtCleanupRow> {
    let folder = Folder(PathBuf::from(format!(
        "/sys/fs/bpf/slb-bench-ct-{}-{}",
        std::process::id(),
        u8::from(shared)
    )));
    let options = DataplaneOptions {
        bpffs: folder.0.clone(),
        sizes: MapSizes {
            services: 1_024,
            backends: 1_024,
            revnat: 256,
            ct_tcp: 16_384,
            ct_any: entries + 16_384,
            ..MapSizes::default()
        },
        ..DataplaneOptions::default()
    };
    let dataplane = Dataplane::open(&options).context("loading service-lb")?;
    let maps_handle = BpfMaps::of(&dataplane).context("opening the maps")?;
    let mut syncer = Syncer::new(ServiceWriter::open(maps_handle).context("writer")?);

    let all: Vec<SocketAddr> = (0..BACKENDS_PER_SERVICE).map(backend).collect();
    let mut desired = vec![service("dns", vec![frontend(VIP, &all)])];
    if shared {
        desired.push(service("dns-too", vec![frontend(OTHER_VIP, &all)]));
    }
    let report = syncer.apply(&desired);
    ensure!(
        report.errors.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let key = FrontendKey {
        addr: VIP.into(),
        port: PORT,
        proto: L4Proto::Udp,
        scope: SCOPE_EXTERNAL,
    };
    let service_id = syncer
        .writer()
        .service_id(&key)
        .context("frontend not programmed")?;
    let ids: Vec<u32> = all
        .iter()
        .map(|b| syncer.writer().backend_id(*b, L4Proto::Udp))
        .collect::<Option<_>>()
        .context("backend not programmed")?;

    eprintln!("slb-bench: conntrack clean-up: writing {entries} UDP conntrack entries");
    let data = MapData::from_pin(pin::map_pin_path(&folder.0, maps::CT4_ANY))
        .context("opening the UDP conntrack map")?;
    let mut ct: HashMap<MapData, CtKey4, CtEntry> = HashMap::try_from(Map::HashMap(data))
        .or_else(|_| {
            let data = MapData::from_pin(pin::map_pin_path(&folder.0, maps::CT4_ANY))?;
            HashMap::try_from(Map::LruHashMap(data))
        })
        .context("UDP conntrack map type")?;
    for flow in 0..entries {
        let client = Ipv4Addr::from(u32::from_be_bytes([198, 18, 100, 0]) + flow / 60_000);
        let sport = 1_024 + (flow % 60_000) as u16;
        let key = CtKey4::new(
            client.octets(),
            VIP.octets(),
            sport.to_be(),
            PORT.to_be(),
            IPPROTO_UDP,
            CT_DIR_SERVICE,
        );
        let entry = CtEntry {
            expires_ns: u64::MAX / 2,
            backend_id: ids[(flow % BACKENDS_PER_SERVICE) as usize],
            service_id,
            ..CtEntry::default()
        };
        ct.insert(key, entry, 0).context("conntrack insert")?;
    }

    // The last endpoint stops serving (gone from the Service's slice).
    let mut desired = vec![service("dns", vec![frontend(VIP, &all[..all.len() - 1])])];
    if shared {
        desired.push(service("dns-too", vec![frontend(OTHER_VIP, &all)]));
    }
    let started = Instant::now();
    let report = syncer.apply(&desired[..1]);
    let sync = started.elapsed();
    ensure!(
        report.errors.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let expected_flushed = if shared {
        // Flows 9, 19, 29, ...: those of the last backend.
        (entries / BACKENDS_PER_SERVICE) as usize
    } else {
        0
    };
    ensure!(
        report.udp_conntrack_flushed == expected_flushed,
        "flushed {} entries, expected {expected_flushed}",
        report.udp_conntrack_flushed
    );
    ensure!(
        report.udp_backends_retired == usize::from(!shared),
        "{report:?}"
    );
    drop(ct);
    drop(syncer);
    drop(dataplane);
    drop(folder);
    Ok(CtCleanupRow {
        case: if shared {
            "endpoint still in another Service's slots (conntrack pass)"
        } else {
            "endpoint left every slot (backend deleted, no pass)"
        },
        conntrack_entries: entries,
        sync,
        flushed: report.udp_conntrack_flushed,
        backends_retired: report.udp_backends_retired,
    })
}
