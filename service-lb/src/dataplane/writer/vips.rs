//! The VIP maps (`service_lb_common::vip`): every address a ClusterIP frontend is
//! programmed on, with how many frontends use it. The programs refuse a new flow to such
//! an address on a port no frontend defines (kube-proxy's "reject traffic to invalid
//! ports of ClusterIPs").
//!
//! Order: an address is written after its first frontend (a packet in between gets the
//! service-CIDR drop, as before the Service existed) and deleted after its last frontend
//! is gone. Only frontends with `SVC_FLAG_CLUSTER_IP` count: node addresses (NodePorts,
//! later) must never be refused.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use service_lb_common::{service::SVC_FLAG_CLUSTER_IP, VipValue};
use tracing::debug;

use super::{FrontendKey, FrontendSpec, ServiceWriter, WriteError};
use crate::dataplane::maps::{Family, MapStore};

/// Records `frontend` under its address when `flags` make it a ClusterIP frontend.
pub(super) fn note(
    cluster_ips: &mut BTreeMap<IpAddr, BTreeSet<FrontendKey>>,
    frontend: FrontendKey,
    flags: u16,
) {
    if flags & SVC_FLAG_CLUSTER_IP != 0 {
        cluster_ips
            .entry(frontend.addr)
            .or_default()
            .insert(frontend);
    }
}

impl<M: MapStore> ServiceWriter<M> {
    /// Every ClusterIP address the writer has programmed, with its frontend count.
    pub fn cluster_ips(&self) -> impl Iterator<Item = (IpAddr, usize)> + '_ {
        self.cluster_ips.iter().map(|(a, f)| (*a, f.len()))
    }

    /// Makes the VIP maps match the frontends recovered at open (a crash between a
    /// frontend write and its VIP write, or maps of an older version without VIP maps).
    pub(super) fn recover_vips(&mut self) -> Result<(), WriteError> {
        let mut present = BTreeMap::new();
        for family in Family::ALL {
            present.extend(self.store.list_vips(family).map_err(WriteError::Recover)?);
        }
        for (addr, value) in &present {
            if !self.cluster_ips.contains_key(addr) {
                self.writes += 1;
                self.store.delete_vip(*addr).map_err(WriteError::Recover)?;
                debug!(%addr, frontends = value.frontends, "stale ClusterIP address deleted");
            }
        }
        let wanted: Vec<(IpAddr, VipValue)> = self
            .cluster_ips
            .iter()
            .map(|(addr, f)| (*addr, VipValue::cluster_ip(count(f))))
            .filter(|(addr, value)| present.get(addr) != Some(value))
            .collect();
        for (addr, value) in wanted {
            self.writes += 1;
            self.store
                .put_vip(addr, &value)
                .map_err(WriteError::Recover)?;
        }
        Ok(())
    }

    /// After `spec` was written: its address counts it when it is a ClusterIP frontend.
    pub(super) fn vip_upserted(&mut self, spec: &FrontendSpec) -> Result<(), WriteError> {
        let key = spec.key;
        let before = self.vip_count(&key.addr);
        if spec.flags & SVC_FLAG_CLUSTER_IP != 0 {
            note(&mut self.cluster_ips, key, spec.flags);
        } else {
            self.forget_vip(&key);
        }
        self.write_vip(&key, before)
    }

    /// After `key` was removed.
    pub(super) fn vip_removed(&mut self, key: &FrontendKey) -> Result<(), WriteError> {
        let before = self.vip_count(&key.addr);
        self.forget_vip(key);
        self.write_vip(key, before)
    }

    fn vip_count(&self, addr: &IpAddr) -> u32 {
        self.cluster_ips.get(addr).map_or(0, count)
    }

    fn forget_vip(&mut self, key: &FrontendKey) {
        if let Some(frontends) = self.cluster_ips.get_mut(&key.addr) {
            frontends.remove(key);
            if frontends.is_empty() {
                self.cluster_ips.remove(&key.addr);
            }
        }
    }

    /// Writes the VIP entry of `key`'s address when its count changed from `before`.
    fn write_vip(&mut self, key: &FrontendKey, before: u32) -> Result<(), WriteError> {
        let after = self.vip_count(&key.addr);
        if after == before {
            return Ok(());
        }
        let store_err = |source| WriteError::Store {
            frontend: *key,
            source,
        };
        self.writes += 1;
        if after == 0 {
            self.store.delete_vip(key.addr).map_err(store_err)
        } else {
            self.store
                .put_vip(key.addr, &VipValue::cluster_ip(after))
                .map_err(store_err)
        }
    }
}

fn count(frontends: &BTreeSet<FrontendKey>) -> u32 {
    u32::try_from(frontends.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use service_lb_common::service::{BACKEND_STATE_ACTIVE, SCOPE_EXTERNAL};

    use super::*;
    use crate::dataplane::{BackendSpec, FakeMaps, L4Proto};

    fn spec(addr: &str, port: u16, flags: u16) -> FrontendSpec {
        let backend = if addr.contains(':') {
            "[fd00:18:0:1::2]:8080"
        } else {
            "198.18.1.2:8080"
        };
        FrontendSpec {
            key: FrontendKey {
                addr: addr.parse().expect("addr"),
                port,
                proto: L4Proto::Tcp,
                scope: SCOPE_EXTERNAL,
            },
            backends: vec![BackendSpec {
                addr: backend.parse().expect("backend"),
                state: BACKEND_STATE_ACTIVE,
                local: false,
            }],
            flags,
            affinity_timeout_s: 0,
            source_ranges: Vec::new(),
        }
    }

    fn vips(w: &ServiceWriter<FakeMaps>) -> Vec<(IpAddr, u32)> {
        w.store()
            .vips
            .iter()
            .map(|(a, v)| {
                assert_eq!(v.flags, service_lb_common::vip::VIP_FLAG_CLUSTER_IP);
                (*a, v.frontends)
            })
            .collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("addr")
    }

    #[test]
    fn an_address_is_in_the_vip_map_while_a_cluster_ip_frontend_uses_it() {
        let mut w = ServiceWriter::open(FakeMaps::new()).expect("opens");
        let http = spec("198.19.0.10", 80, SVC_FLAG_CLUSTER_IP);
        let https = spec("198.19.0.10", 443, SVC_FLAG_CLUSTER_IP);
        let v6 = spec("fd00:19::10", 80, SVC_FLAG_CLUSTER_IP);
        let not_cluster_ip = spec("198.19.255.1", 30080, 0);
        for s in [&http, &https, &v6, &not_cluster_ip] {
            w.upsert(s).expect("upsert");
        }
        assert_eq!(
            vips(&w),
            [(ip("198.19.0.10"), 2), (ip("fd00:19::10"), 1)],
            "a node address (no ClusterIP flag) is never in the map"
        );
        w.upsert(&http).expect("same spec again");
        assert_eq!(vips(&w)[0], (ip("198.19.0.10"), 2));

        w.remove(&http.key).expect("remove");
        assert_eq!(vips(&w)[0], (ip("198.19.0.10"), 1));
        w.remove(&https.key).expect("remove");
        assert_eq!(vips(&w), [(ip("fd00:19::10"), 1)]);
        w.remove(&v6.key).expect("remove");
        assert!(vips(&w).is_empty());
    }

    #[test]
    fn open_repairs_the_vip_map_from_the_frontends() {
        let mut w = ServiceWriter::open(FakeMaps::new()).expect("opens");
        w.upsert(&spec("198.19.0.10", 80, SVC_FLAG_CLUSTER_IP))
            .expect("upsert");
        w.upsert(&spec("198.19.0.11", 80, SVC_FLAG_CLUSTER_IP))
            .expect("upsert");
        let mut maps = w.into_store();
        // A crash left a stale address, lost one and miscounted none.
        maps.vips.remove(&ip("198.19.0.11"));
        maps.vips.insert(ip("198.19.0.99"), VipValue::cluster_ip(1));
        let w = ServiceWriter::open(maps).expect("reopens");
        assert_eq!(vips(&w), [(ip("198.19.0.10"), 1), (ip("198.19.0.11"), 1)]);
        assert_eq!(w.cluster_ips().count(), 2);
    }
}
