//! The data path's lookups, in user space: the same tables the kernel maps will hold
//! (see the module doc), and the same longest-prefix-match walk, so tests can check the
//! compiled view packet by packet.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use super::{
    ports::PortSet,
    view::{Direction, Prefix, Proto},
    PodPolicy,
};

/// Per-pod facts the kernel keys by pod address.
#[derive(Clone, Copy, Debug)]
struct PodEntry {
    id: u32,
    ingress_isolated: bool,
    egress_isolated: bool,
}

/// The kernel tables built from compiled pods (of one node or several).
#[derive(Debug, Default)]
pub struct LookupTables {
    pods: HashMap<IpAddr, PodEntry>,
    /// LPM trie 1: (pod id, direction, peer prefix) -> port set id.
    peers: HashMap<(u32, Direction, Prefix), u32>,
    /// LPM trie 2: (port set id, protocol, port block start, block length).
    ports: HashSet<(u32, Proto, u16, u8)>,
    /// Interned port sets.
    set_ids: BTreeMap<PortSet, u32>,
}

impl LookupTables {
    pub fn build<'a>(pods: impl IntoIterator<Item = &'a PodPolicy>) -> Self {
        let mut t = Self::default();
        for (id, pod) in (0u32..).zip(pods) {
            let entry = PodEntry {
                id,
                ingress_isolated: pod.ingress.isolated,
                egress_isolated: pod.egress.isolated,
            };
            for &ip in &pod.ips {
                t.pods.insert(ip, entry);
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                for (prefix, set) in &pod.direction(dir).entries {
                    let set_id = t.intern(set);
                    t.peers.insert((id, dir, *prefix), set_id);
                }
            }
        }
        t
    }

    fn intern(&mut self, set: &PortSet) -> u32 {
        if let Some(&id) = self.set_ids.get(set) {
            return id;
        }
        let id = u32::try_from(self.set_ids.len()).unwrap_or(u32::MAX);
        self.set_ids.insert(set.clone(), id);
        for (proto, first, len) in set.blocks() {
            self.ports.insert((id, proto, first, len));
        }
        id
    }

    /// Number of peer entries and port blocks (the map sizes).
    pub fn sizes(&self) -> (usize, usize) {
        (self.peers.len(), self.ports.len())
    }

    /// The verdict for a new flow `src -> dst:port`: the source pod's egress (if it is a
    /// pod here) and the destination pod's ingress (likewise).
    pub fn allowed(&self, src: IpAddr, dst: IpAddr, proto: Proto, port: u16) -> bool {
        let egress = self.pods.get(&src).is_none_or(|p| {
            !p.egress_isolated || self.check(p.id, Direction::Egress, dst, proto, port)
        });
        let ingress = self.pods.get(&dst).is_none_or(|p| {
            !p.ingress_isolated || self.check(p.id, Direction::Ingress, src, proto, port)
        });
        egress && ingress
    }

    fn check(&self, id: u32, dir: Direction, peer: IpAddr, proto: Proto, port: u16) -> bool {
        let width = if peer.is_ipv4() { 32 } else { 128 };
        let Some(set) = (0..=width)
            .rev()
            .find_map(|len| self.peers.get(&(id, dir, Prefix::new(peer, len))))
        else {
            return false;
        };
        (0..=16u8).rev().any(|len| {
            let block = u16::try_from(u32::from(port) >> (16 - len) << (16 - len)).unwrap_or(0);
            self.ports.contains(&(*set, proto, block, len))
        })
    }
}
