//! Typed access to the NetworkPolicy maps (`service_lb_common::policy`), behind the
//! `PolicyMapStore` trait (the same pattern as `MapStore`): the kernel maps
//! (`BpfPolicyMaps`) and an in-memory fake (`FakePolicyMaps`) that logs every write, so
//! the writer's order can be asserted.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError};
use service_lb_common::{
    maps,
    policy::{
        PolPeer4, PolPeer6, PolPod, PolPort, POL_PEER_PREFIX_BITS, POL_PORT_ALLOWED,
        POL_PORT_PREFIX_BITS,
    },
};

use super::{
    bpf_maps::{failed, is_full, is_missing},
    error::DataplaneError,
    maps::{StoreError, StoreOp},
    pin,
};
use crate::model::policy::Prefix;

/// A peer trie entry's key: (pod id, direction, peer prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey {
    pub pod_id: u32,
    /// `POL_DIR_*`.
    pub dir: u8,
    pub prefix: Prefix,
}

/// A port trie entry: (port set id, protocol number, aligned block `first`/`len` bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub set_id: u32,
    pub proto: u8,
    /// First port of the block (host order).
    pub first: u16,
    /// Prefix length over the 16 port bits (16 = one port).
    pub len: u8,
}

/// Low-level access to the policy maps. Deleting a missing entry succeeds.
pub trait PolicyMapStore {
    fn put_pol_pod(&mut self, addr: IpAddr, value: &PolPod) -> Result<(), StoreError>;
    fn delete_pol_pod(&mut self, addr: IpAddr) -> Result<(), StoreError>;
    fn list_pol_pods(&self) -> Result<Vec<(IpAddr, PolPod)>, StoreError>;

    fn put_pol_peer(&mut self, key: &PeerKey, set_id: u32) -> Result<(), StoreError>;
    fn delete_pol_peer(&mut self, key: &PeerKey) -> Result<(), StoreError>;
    fn list_pol_peers(&self) -> Result<Vec<(PeerKey, u32)>, StoreError>;

    fn put_pol_port(&mut self, key: &PortKey) -> Result<(), StoreError>;
    fn delete_pol_port(&mut self, key: &PortKey) -> Result<(), StoreError>;
    fn list_pol_ports(&self) -> Result<Vec<PortKey>, StoreError>;

    /// `SLB_POLCFG_V1[0]`: whether the programs check policy at all.
    fn set_policy_enabled(&mut self, on: bool) -> Result<(), StoreError>;
}

/// One write of the fake (reads are not logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyOp {
    PutPod(IpAddr, PolPod),
    DeletePod(IpAddr),
    PutPeer(PeerKey, u32),
    DeletePeer(PeerKey),
    PutPort(PortKey),
    DeletePort(PortKey),
    Enabled(bool),
}

/// `PolicyMapStore` in memory, with a write log and an optional failure injection.
#[derive(Clone, Debug, Default)]
pub struct FakePolicyMaps {
    pub pods: BTreeMap<IpAddr, PolPod>,
    pub peers: BTreeMap<PeerKey, u32>,
    pub ports: BTreeSet<PortKey>,
    pub enabled: bool,
    pub ops: Vec<PolicyOp>,
    /// Capacity of the peer maps (both families together); `None` = unbounded.
    pub peers_max: Option<usize>,
}

impl FakePolicyMaps {
    fn log(&mut self, op: PolicyOp) {
        self.ops.push(op);
    }
}

impl PolicyMapStore for FakePolicyMaps {
    fn put_pol_pod(&mut self, addr: IpAddr, value: &PolPod) -> Result<(), StoreError> {
        self.log(PolicyOp::PutPod(addr, *value));
        self.pods.insert(addr, *value);
        Ok(())
    }
    fn delete_pol_pod(&mut self, addr: IpAddr) -> Result<(), StoreError> {
        self.log(PolicyOp::DeletePod(addr));
        self.pods.remove(&addr);
        Ok(())
    }
    fn list_pol_pods(&self) -> Result<Vec<(IpAddr, PolPod)>, StoreError> {
        Ok(self.pods.iter().map(|(a, p)| (*a, *p)).collect())
    }
    fn put_pol_peer(&mut self, key: &PeerKey, set_id: u32) -> Result<(), StoreError> {
        if !self.peers.contains_key(key) && self.peers_max.is_some_and(|m| self.peers.len() >= m) {
            return Err(StoreError::Full {
                map: if key.prefix.is_v4() {
                    maps::POL_PEERS4
                } else {
                    maps::POL_PEERS6
                },
            });
        }
        self.log(PolicyOp::PutPeer(*key, set_id));
        self.peers.insert(*key, set_id);
        Ok(())
    }
    fn delete_pol_peer(&mut self, key: &PeerKey) -> Result<(), StoreError> {
        self.log(PolicyOp::DeletePeer(*key));
        self.peers.remove(key);
        Ok(())
    }
    fn list_pol_peers(&self) -> Result<Vec<(PeerKey, u32)>, StoreError> {
        Ok(self.peers.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn put_pol_port(&mut self, key: &PortKey) -> Result<(), StoreError> {
        self.log(PolicyOp::PutPort(*key));
        self.ports.insert(*key);
        Ok(())
    }
    fn delete_pol_port(&mut self, key: &PortKey) -> Result<(), StoreError> {
        self.log(PolicyOp::DeletePort(*key));
        self.ports.remove(key);
        Ok(())
    }
    fn list_pol_ports(&self) -> Result<Vec<PortKey>, StoreError> {
        Ok(self.ports.iter().copied().collect())
    }
    fn set_policy_enabled(&mut self, on: bool) -> Result<(), StoreError> {
        self.log(PolicyOp::Enabled(on));
        self.enabled = on;
        Ok(())
    }
}

/// The kernel's policy maps.
pub struct BpfPolicyMaps {
    pods4: HashMap<MapData, [u8; 4], PolPod>,
    pods6: HashMap<MapData, [u8; 16], PolPod>,
    peers4: LpmTrie<MapData, PolPeer4, u32>,
    peers6: LpmTrie<MapData, PolPeer6, u32>,
    ports: LpmTrie<MapData, PolPort, u32>,
    config: Array<MapData, u32>,
}

impl BpfPolicyMaps {
    /// Opens the pinned maps under `bpffs` (the daemon's, or a test's own folder).
    pub fn open_pinned(bpffs: &Path) -> Result<Self, DataplaneError> {
        Self::from_maps(|name| {
            let path = pin::map_pin_path(bpffs, name);
            let data = MapData::from_pin(&path).map_err(|e| DataplaneError::map(name, e))?;
            Map::from_map_data(data).map_err(|e| DataplaneError::map(name, e))
        })
    }

    /// From maps obtained by name (a loaded object's `take_map`, or pins).
    pub fn from_maps(
        mut open: impl FnMut(&'static str) -> Result<Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        fn typed<T: TryFrom<Map, Error = MapError>>(
            name: &'static str,
            map: Map,
        ) -> Result<T, DataplaneError> {
            T::try_from(map).map_err(|e| DataplaneError::map(name, e))
        }
        Ok(Self {
            pods4: typed(maps::POL_PODS4, open(maps::POL_PODS4)?)?,
            pods6: typed(maps::POL_PODS6, open(maps::POL_PODS6)?)?,
            peers4: typed(maps::POL_PEERS4, open(maps::POL_PEERS4)?)?,
            peers6: typed(maps::POL_PEERS6, open(maps::POL_PEERS6)?)?,
            ports: typed(maps::POL_PORTS, open(maps::POL_PORTS)?)?,
            config: typed(maps::POL_CONFIG, open(maps::POL_CONFIG)?)?,
        })
    }
}

fn put_err(name: &'static str, e: MapError) -> StoreError {
    if is_full(&e) {
        StoreError::Full { map: name }
    } else {
        failed(name, StoreOp::Put, e)
    }
}

fn delete_ok(name: &'static str, r: Result<(), MapError>) -> Result<(), StoreError> {
    match r {
        Err(e) if !is_missing(&e) => Err(failed(name, StoreOp::Delete, e)),
        _ => Ok(()),
    }
}

fn peer_len(prefix: &Prefix) -> u32 {
    POL_PEER_PREFIX_BITS + u32::from(prefix.prefix_len())
}

fn port_key(key: &PortKey) -> Key<PolPort> {
    Key::new(
        POL_PORT_PREFIX_BITS + u32::from(key.len),
        PolPort::new(key.set_id, key.proto, key.first.to_be()),
    )
}

impl PolicyMapStore for BpfPolicyMaps {
    fn put_pol_pod(&mut self, addr: IpAddr, value: &PolPod) -> Result<(), StoreError> {
        match addr {
            IpAddr::V4(a) => self
                .pods4
                .insert(a.octets(), value, 0)
                .map_err(|e| put_err(maps::POL_PODS4, e)),
            IpAddr::V6(a) => self
                .pods6
                .insert(a.octets(), value, 0)
                .map_err(|e| put_err(maps::POL_PODS6, e)),
        }
    }

    fn delete_pol_pod(&mut self, addr: IpAddr) -> Result<(), StoreError> {
        match addr {
            IpAddr::V4(a) => delete_ok(maps::POL_PODS4, self.pods4.remove(&a.octets())),
            IpAddr::V6(a) => delete_ok(maps::POL_PODS6, self.pods6.remove(&a.octets())),
        }
    }

    fn list_pol_pods(&self) -> Result<Vec<(IpAddr, PolPod)>, StoreError> {
        let mut out = Vec::new();
        for item in self.pods4.iter() {
            let (k, v) = item.map_err(|e| failed(maps::POL_PODS4, StoreOp::List, e))?;
            out.push((Ipv4Addr::from(k).into(), v));
        }
        for item in self.pods6.iter() {
            let (k, v) = item.map_err(|e| failed(maps::POL_PODS6, StoreOp::List, e))?;
            out.push((Ipv6Addr::from(k).into(), v));
        }
        Ok(out)
    }

    fn put_pol_peer(&mut self, key: &PeerKey, set_id: u32) -> Result<(), StoreError> {
        let len = peer_len(&key.prefix);
        match key.prefix.addr() {
            IpAddr::V4(a) => self
                .peers4
                .insert(
                    &Key::new(len, PolPeer4::new(key.pod_id, key.dir, a.octets())),
                    set_id,
                    0,
                )
                .map_err(|e| put_err(maps::POL_PEERS4, e)),
            IpAddr::V6(a) => self
                .peers6
                .insert(
                    &Key::new(len, PolPeer6::new(key.pod_id, key.dir, a.octets())),
                    set_id,
                    0,
                )
                .map_err(|e| put_err(maps::POL_PEERS6, e)),
        }
    }

    fn delete_pol_peer(&mut self, key: &PeerKey) -> Result<(), StoreError> {
        let len = peer_len(&key.prefix);
        match key.prefix.addr() {
            IpAddr::V4(a) => delete_ok(
                maps::POL_PEERS4,
                self.peers4.remove(&Key::new(
                    len,
                    PolPeer4::new(key.pod_id, key.dir, a.octets()),
                )),
            ),
            IpAddr::V6(a) => delete_ok(
                maps::POL_PEERS6,
                self.peers6.remove(&Key::new(
                    len,
                    PolPeer6::new(key.pod_id, key.dir, a.octets()),
                )),
            ),
        }
    }

    fn list_pol_peers(&self) -> Result<Vec<(PeerKey, u32)>, StoreError> {
        let mut out = Vec::new();
        for item in self.peers4.iter() {
            let (k, v) = item.map_err(|e| failed(maps::POL_PEERS4, StoreOp::List, e))?;
            let data = k.data();
            let len = k.prefix_len().saturating_sub(POL_PEER_PREFIX_BITS);
            out.push((
                PeerKey {
                    pod_id: data.pod_id,
                    dir: data.dir,
                    prefix: Prefix::new(Ipv4Addr::from(data.peer).into(), len as u8),
                },
                v,
            ));
        }
        for item in self.peers6.iter() {
            let (k, v) = item.map_err(|e| failed(maps::POL_PEERS6, StoreOp::List, e))?;
            let data = k.data();
            let len = k.prefix_len().saturating_sub(POL_PEER_PREFIX_BITS);
            out.push((
                PeerKey {
                    pod_id: data.pod_id,
                    dir: data.dir,
                    prefix: Prefix::new(Ipv6Addr::from(data.peer).into(), len as u8),
                },
                v,
            ));
        }
        Ok(out)
    }

    fn put_pol_port(&mut self, key: &PortKey) -> Result<(), StoreError> {
        self.ports
            .insert(&port_key(key), POL_PORT_ALLOWED, 0)
            .map_err(|e| put_err(maps::POL_PORTS, e))
    }

    fn delete_pol_port(&mut self, key: &PortKey) -> Result<(), StoreError> {
        delete_ok(maps::POL_PORTS, self.ports.remove(&port_key(key)))
    }

    fn list_pol_ports(&self) -> Result<Vec<PortKey>, StoreError> {
        let mut out = Vec::new();
        for item in self.ports.iter() {
            let (k, _) = item.map_err(|e| failed(maps::POL_PORTS, StoreOp::List, e))?;
            let data = k.data();
            out.push(PortKey {
                set_id: data.set_id,
                proto: data.proto,
                first: u16::from_be(data.port_be),
                len: k.prefix_len().saturating_sub(POL_PORT_PREFIX_BITS) as u8,
            });
        }
        Ok(out)
    }

    fn set_policy_enabled(&mut self, on: bool) -> Result<(), StoreError> {
        self.config
            .set(0, u32::from(on), 0)
            .map_err(|e| failed(maps::POL_CONFIG, StoreOp::Put, e))
    }
}
