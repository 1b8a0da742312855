//! What kube-proxy's IPVS mode leaves besides iptables chains: the `kube-ipvs0` dummy
//! interface (holding every ClusterIP), its ipsets (by kube-proxy's exact names, from
//! `pkg/proxy/ipvs/ipset.go`: IPv6 sets carry `KUBE-6-` instead of `KUBE-`), and the IPVS
//! virtual servers on the addresses of `kube-ipvs0` (kube-proxy binds every ClusterIP,
//! external IP and LoadBalancer IP it serves there), read from `ipvsadm -Sn` and removed
//! with `ipvsadm -D` one by one. Virtual servers on other addresses (NodePorts on the
//! node's own addresses, anybody else's) and firewall-mark ones are kept.

use std::net::{IpAddr, SocketAddr};

/// kube-proxy's dummy interface in IPVS mode.
pub const KUBE_IPVS_DEV: &str = "kube-ipvs0";

/// kube-proxy's IPVS-mode ipsets (IPv4 names; IPv6 ones replace `KUBE-` by `KUBE-6-`).
pub const KUBE_PROXY_IPSETS: [&str; 17] = [
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// Whether the ipset `name` is one of kube-proxy's (either family).
pub fn is_kube_proxys_ipset(name: &str) -> bool {
    let v4 = match name.strip_prefix("KUBE-6-") {
        Some(rest) => format!("KUBE-{rest}"),
        None => name.to_owned(),
    };
    KUBE_PROXY_IPSETS.contains(&v4.as_str())
}

/// kube-proxy's ipsets among `ipset list -n` output, in order; the others are kept.
pub fn kube_proxy_ipsets(listed: &str) -> (Vec<String>, Vec<String>) {
    listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .partition(|name| is_kube_proxys_ipset(name))
}

/// An IPVS virtual server's protocol, as `ipvsadm` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsProto {
    Tcp,
    Udp,
    Sctp,
}

impl VsProto {
    fn flag(self) -> &'static str {
        match self {
            VsProto::Tcp => "-t",
            VsProto::Udp => "-u",
            VsProto::Sctp => "--sctp-service",
        }
    }
}

/// One virtual server of `ipvsadm -Sn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub proto: VsProto,
    pub addr: SocketAddr,
}

impl VirtualServer {
    /// `ipvsadm` arguments deleting it (and its real servers).
    pub fn delete_args(&self) -> [String; 3] {
        [
            "-D".to_owned(),
            self.proto.flag().to_owned(),
            self.addr.to_string(),
        ]
    }
}

impl std::fmt::Display for VirtualServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.proto.flag(), self.addr)
    }
}

/// The virtual servers (`-A` lines) of `ipvsadm -Sn` output; real servers (`-a`),
/// firewall-mark services (`-f`) and lines it cannot read are left out. Addresses are
/// numeric (`-n`): `198.19.0.10:80`, `[fd00:19::10]:80`.
pub fn virtual_servers(saved: &str) -> Vec<VirtualServer> {
    let mut out = Vec::new();
    for line in saved.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("-A") && !line.trim_start().starts_with("--add-service") {
            continue;
        }
        let (Some(flag), Some(addr)) = (words.next(), words.next()) else {
            continue;
        };
        let proto = match flag {
            "-t" | "--tcp-service" => VsProto::Tcp,
            "-u" | "--udp-service" => VsProto::Udp,
            "--sctp-service" => VsProto::Sctp,
            _ => continue,
        };
        if let Ok(addr) = addr.parse::<SocketAddr>() {
            out.push(VirtualServer { proto, addr });
        }
    }
    out
}

/// The addresses of `ip -o addr show dev kube-ipvs0` output.
pub fn interface_addresses(ip_o_addr: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in ip_o_addr.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                if let Some(ip) = words
                    .next()
                    .and_then(|cidr| cidr.split('/').next())
                    .and_then(|a| a.parse().ok())
                {
                    out.push(ip);
                }
            }
        }
    }
    out
}

/// Splits `servers` into kube-proxy's (on an address of `kube-ipvs0`) and the others.
pub fn kube_proxy_virtual_servers(
    servers: &[VirtualServer],
    kube_ipvs0: &[IpAddr],
) -> (Vec<VirtualServer>, Vec<VirtualServer>) {
    servers
        .iter()
        .partition(|vs| kube_ipvs0.contains(&vs.addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ipvsadm -Sn` of a node in kube-proxy's IPVS mode (ipvsadm 1.31's format), with
    /// ClusterIPs, a NodePort on the node's address, a dual-stack Service, SCTP, a
    /// persistent (sessionAffinity) service, a firewall-mark service and someone else's.
    const IPVSADM_SN: &str = "\
-A -t 198.19.0.1:443 -s rr
-a -t 198.19.0.1:443 -r 198.19.255.1:6443 -m -w 1
-A -u 198.19.0.10:53 -s rr
-a -u 198.19.0.10:53 -r 198.18.1.2:53 -m -w 1
-a -u 198.19.0.10:53 -r 198.18.1.3:53 -m -w 1
-A -t 198.19.0.10:53 -s rr
-A -t 198.19.0.20:80 -s rr -p 10800
-a -t 198.19.0.20:80 -r 198.18.1.4:8080 -m -w 1
-A --sctp-service 198.19.0.30:9000 -s rr
-A -t 198.19.255.1:30080 -s rr
-a -t 198.19.255.1:30080 -r 198.18.1.4:8080 -m -w 1
-A -t [fd00:19::10]:80 -s rr
-a -t [fd00:19::10]:80 -r [fd00:18:0:1::4]:8080 -m -w 1
-A -f 100 -s wlc
-A -t 198.19.200.5:443 -s wlc
";

    /// `ip -o addr show dev kube-ipvs0` of that node.
    const IP_O_ADDR: &str = r"7: kube-ipvs0    inet 198.19.0.1/32 scope global kube-ipvs0\       valid_lft forever preferred_lft forever
7: kube-ipvs0    inet 198.19.0.10/32 scope global kube-ipvs0\       valid_lft forever preferred_lft forever
7: kube-ipvs0    inet 198.19.0.20/32 scope global kube-ipvs0\       valid_lft forever preferred_lft forever
7: kube-ipvs0    inet 198.19.0.30/32 scope global kube-ipvs0\       valid_lft forever preferred_lft forever
7: kube-ipvs0    inet6 fd00:19::10/128 scope global \       valid_lft forever preferred_lft forever
";

    fn vs(proto: VsProto, addr: &str) -> VirtualServer {
        VirtualServer {
            proto,
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn virtual_servers_on_kube_ipvs0_are_kube_proxys_and_the_rest_is_kept() {
        let servers = virtual_servers(IPVSADM_SN);
        let addrs = interface_addresses(IP_O_ADDR);
        assert_eq!(addrs.len(), 5);
        let (ours, kept) = kube_proxy_virtual_servers(&servers, &addrs);
        assert_eq!(
            ours,
            [
                vs(VsProto::Tcp, "198.19.0.1:443"),
                vs(VsProto::Udp, "198.19.0.10:53"),
                vs(VsProto::Tcp, "198.19.0.10:53"),
                vs(VsProto::Tcp, "198.19.0.20:80"),
                vs(VsProto::Sctp, "198.19.0.30:9000"),
                vs(VsProto::Tcp, "[fd00:19::10]:80"),
            ]
        );
        // The NodePort on the node's address and someone else's service stay (the
        // firewall-mark one is not even read).
        assert_eq!(
            kept,
            [
                vs(VsProto::Tcp, "198.19.255.1:30080"),
                vs(VsProto::Tcp, "198.19.200.5:443"),
            ]
        );
        assert_eq!(ours[1].delete_args(), ["-D", "-u", "198.19.0.10:53"]);
        assert_eq!(
            ours[4].delete_args(),
            ["-D", "--sctp-service", "198.19.0.30:9000"]
        );
        assert_eq!(ours[5].delete_args(), ["-D", "-t", "[fd00:19::10]:80"]);
    }

    #[test]
    fn no_kube_ipvs0_means_nothing_is_kube_proxys() {
        let servers = virtual_servers(IPVSADM_SN);
        let (ours, kept) = kube_proxy_virtual_servers(&servers, &[]);
        assert!(ours.is_empty());
        assert_eq!(kept.len(), 8);
        assert!(virtual_servers("").is_empty());
        assert!(interface_addresses("").is_empty());
    }

    #[test]
    fn exact_names_of_both_families_and_nothing_else() {
        for name in KUBE_PROXY_IPSETS {
            assert!(is_kube_proxys_ipset(name), "{name}");
            let v6 = name.replacen("KUBE-", "KUBE-6-", 1);
            assert!(is_kube_proxys_ipset(&v6), "{v6}");
        }
        for other in [
            "KUBE-ROUTER-SERVICES",
            "KUBE-CLUSTER-IP-X",
            "kube-cluster-ip",
            "KUBE-6-",
            "cali40all-ipam-pools",
            "KUBE-DST-ABC",
        ] {
            assert!(!is_kube_proxys_ipset(other), "{other}");
        }
    }

    #[test]
    fn listing_is_split_into_removed_and_kept() {
        let (ours, kept) = kube_proxy_ipsets("KUBE-CLUSTER-IP\ncali40this\n\nKUBE-6-LOOP-BACK\n");
        assert_eq!(ours, ["KUBE-CLUSTER-IP", "KUBE-6-LOOP-BACK"]);
        assert_eq!(kept, ["cali40this"]);
    }
}
