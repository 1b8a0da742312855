//! The SNAT reverse maps (`SLB_SNAT4_V1` / `SLB_SNAT6_V1`), read from their pins for
//! `inspect snat`: which north-south flow was SNATed to which node port.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use service_lb_common::{
    maps,
    northsouth::{SnatRev4, SnatRev6},
    CtKey4, CtKey6,
};

use super::{bpf_maps::open_hash, error::DataplaneError};

/// One SNATed flow, as its reply arrives: backend -> node address:allocated port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatRecord {
    pub proto: u8,
    pub backend: SocketAddr,
    /// This node's address and the allocated source port.
    pub node: SocketAddr,
    /// The client the replies go back to.
    pub client: SocketAddr,
}

fn sock(addr: IpAddr, port_be: u16) -> SocketAddr {
    SocketAddr::new(addr, u16::from_be(port_be))
}

/// Every entry of both SNAT maps, sorted by node port then backend.
pub fn entries(bpffs: &Path) -> Result<Vec<SnatRecord>, DataplaneError> {
    let mut out = Vec::new();
    let snat4 = open_hash::<CtKey4, SnatRev4>(bpffs, maps::SNAT4)?;
    for entry in snat4.iter() {
        let (k, v) = entry.map_err(|e| DataplaneError::map(maps::SNAT4, e))?;
        out.push(SnatRecord {
            proto: k.proto,
            backend: sock(Ipv4Addr::from(k.saddr).into(), k.sport_be),
            node: sock(Ipv4Addr::from(k.daddr).into(), k.dport_be),
            client: sock(Ipv4Addr::from(v.client_addr).into(), v.client_port_be),
        });
    }
    let snat6 = open_hash::<CtKey6, SnatRev6>(bpffs, maps::SNAT6)?;
    for entry in snat6.iter() {
        let (k, v) = entry.map_err(|e| DataplaneError::map(maps::SNAT6, e))?;
        out.push(SnatRecord {
            proto: k.proto,
            backend: sock(Ipv6Addr::from(k.saddr).into(), k.sport_be),
            node: sock(Ipv6Addr::from(k.daddr).into(), k.dport_be),
            client: sock(Ipv6Addr::from(v.client_addr).into(), v.client_port_be),
        });
    }
    out.sort_by_key(|r| (r.node, r.backend, r.proto));
    Ok(out)
}
