//! The data plane's own view for a scrape: entries and capacity of every hash map, and
//! the programs' per-CPU counters summed over CPUs, read from the pinned maps.

use std::{net::IpAddr, path::Path};

use service_lb_common::maps;

use crate::{
    dataplane::{BpfMaps, CtTable, DataplaneError, Family, MapSizes, MapStore},
    telemetry::metrics::{DatapathSnapshot, MapFill, PathCounter},
};

/// Reads everything; a failure is reported inside the snapshot (the scrape goes on).
pub fn read_snapshot(bpffs: &Path, sizes: &MapSizes) -> DatapathSnapshot {
    match read(bpffs, sizes) {
        Ok(snapshot) => snapshot,
        Err(e) => DatapathSnapshot {
            error: Some(e.to_string()),
            ..DatapathSnapshot::default()
        },
    }
}

fn read(bpffs: &Path, sizes: &MapSizes) -> Result<DatapathSnapshot, DataplaneError> {
    let maps = BpfMaps::open_pinned(bpffs)?;
    let mut fills = Vec::new();
    for family in Family::ALL {
        fills.push(fill(
            family.services_map(),
            maps.list_services(family)?.len(),
            sizes.services,
        ));
        fills.push(fill(
            family.backends_map(),
            maps.list_backends(family)?.len(),
            sizes.backends,
        ));
        fills.push(fill(
            family.revnat_map(),
            maps.list_revnat(family)?.len(),
            sizes.revnat,
        ));
    }
    let mut ct = [0usize; 4];
    for record in maps.conntrack()? {
        let v6 = matches!(record.saddr, IpAddr::V6(_));
        let tcp = record.table == CtTable::Tcp;
        ct[usize::from(v6) * 2 + usize::from(!tcp)] += 1;
    }
    fills.push(fill(maps::CT4_TCP, ct[0], sizes.ct_tcp));
    fills.push(fill(maps::CT4_ANY, ct[1], sizes.ct_any));
    fills.push(fill(maps::CT6_TCP, ct[2], sizes.ct_tcp));
    fills.push(fill(maps::CT6_ANY, ct[3], sizes.ct_any));

    let counters = maps
        .counters()?
        .into_iter()
        .map(|c| PathCounter {
            hook: c.hook.name(),
            reason: c.reason.name(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    Ok(DatapathSnapshot {
        maps: fills,
        counters,
        error: None,
    })
}

fn fill(map: &'static str, entries: usize, capacity: u32) -> MapFill {
    MapFill {
        map,
        entries: u64::try_from(entries).unwrap_or(u64::MAX),
        capacity: u64::from(capacity),
    }
}
