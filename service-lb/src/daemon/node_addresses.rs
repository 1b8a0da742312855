//! `SLB_NODEADDR_V1`: the address per family that SNATed north-south flows (eTP=Cluster)
//! leave this node with. As kube-proxy's masquerade picks the node's primary address: the
//! Node object's first `InternalIP` of the family; without one, the first NodePort address
//! of the family (`--nodeport-addresses` applied to the Node's and the external
//! interfaces' addresses); without either, none (the programs then drop SNAT flows of that
//! family, counted `drop_snat_no_address`).
//!
//! Written before the Services' frontends on every sync where it changed (a Node update,
//! an interface address change), so a frontend with `SVC_FLAG_SNAT` never finds an
//! address older than the frontends.

use std::net::IpAddr;

use crate::{dataplane::maps::NodeAddresses, model::NodeInfo};

/// The SNAT source addresses from the Node object and the NodePort addresses (sorted).
pub fn snat_addresses(node: Option<&NodeInfo>, nodeport_addresses: &[IpAddr]) -> NodeAddresses {
    let internal: Vec<IpAddr> = node
        .into_iter()
        .flat_map(|n| n.addresses.iter())
        .filter(|(kind, _)| kind == "InternalIP")
        .filter_map(|(_, text)| text.trim().parse().ok())
        .collect();
    let pick = |v6: bool| {
        internal
            .iter()
            .chain(nodeport_addresses)
            .copied()
            .find(|ip| ip.is_ipv6() == v6 && !ip.is_loopback() && !ip.is_unspecified())
    };
    NodeAddresses {
        v4: match pick(false) {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        v6: match pick(true) {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn node(addresses: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            addresses: addresses
                .iter()
                .map(|(k, a)| ((*k).to_owned(), (*a).to_owned()))
                .collect(),
            zone: None,
        }
    }

    #[test]
    fn the_first_internal_ip_of_each_family_wins() {
        let n = node(&[
            ("Hostname", "n1"),
            ("ExternalIP", "198.19.200.7"),
            ("InternalIP", "198.19.255.1"),
            ("InternalIP", "198.19.255.9"),
            ("InternalIP", "fd00:ff::1"),
        ]);
        let nodeport: Vec<IpAddr> = vec!["198.19.200.7".parse().unwrap()];
        assert_eq!(
            snat_addresses(Some(&n), &nodeport),
            NodeAddresses {
                v4: Some(Ipv4Addr::new(198, 19, 255, 1)),
                v6: Some("fd00:ff::1".parse::<Ipv6Addr>().unwrap()),
            }
        );
    }

    #[test]
    fn without_an_internal_ip_the_first_nodeport_address_of_the_family() {
        let n = node(&[("InternalIP", "fd00:ff::2"), ("InternalIP", "not an ip")]);
        let nodeport: Vec<IpAddr> = vec![
            "198.19.255.2".parse().unwrap(),
            "198.19.255.3".parse().unwrap(),
            "fd00:ff::9".parse().unwrap(),
        ];
        assert_eq!(
            snat_addresses(Some(&n), &nodeport),
            NodeAddresses {
                v4: Some(Ipv4Addr::new(198, 19, 255, 2)),
                v6: Some("fd00:ff::2".parse::<Ipv6Addr>().unwrap()),
            }
        );
        // No Node object and no NodePort address: nothing for either family.
        assert_eq!(snat_addresses(None, &[]), NodeAddresses::default());
        // A loopback InternalIP is never a source for traffic leaving the node.
        let lo = node(&[("InternalIP", "127.0.0.1")]);
        assert_eq!(snat_addresses(Some(&lo), &[]).v4, None);
    }
}
