//! kube-proxy's rules, generated in its own layout, for N services of M endpoints each: the
//! iptables mode (an `iptables-restore` input for nat, filter and mangle) and the nftables
//! mode (an `nft -f` input for `table ip|ip6 kube-proxy`). Used by the clean-up test and
//! the benchmark against kube-proxy.
//!
//! Layout (as kube-proxy writes it):
//! - nat: PREROUTING/OUTPUT -> KUBE-SERVICES -> (per ClusterIP:port) KUBE-SVC-<hash> ->
//!   `-m statistic --mode random --probability 1/(n-i)` -> KUBE-SEP-<hash> (mark for
//!   masquerade, DNAT); KUBE-SERVICES ends with the jump to KUBE-NODEPORTS;
//!   POSTROUTING -> KUBE-POSTROUTING (MASQUERADE what KUBE-MARK-MASQ marked);
//! - filter: INPUT/FORWARD/OUTPUT -> KUBE-PROXY-FIREWALL, KUBE-NODEPORTS,
//!   KUBE-EXTERNAL-SERVICES, KUBE-SERVICES (REJECT for services without endpoints),
//!   KUBE-FORWARD; IPv4 only: KUBE-FIREWALL (localnet guard);
//! - mangle, nat, filter: KUBE-PROXY-CANARY (empty);
//! - nftables: a `service-ips` verdict map keyed by ip . proto . port, one chain per service
//!   (`numgen random mod n vmap`) and one per endpoint (mark, dnat), base chains hooked on
//!   prerouting/output/postrouting.
//!
//! Addresses come from the test ranges: ClusterIPs from 198.19.0.0/17 and fd00:19::/108,
//! endpoints from the pod CIDRs 198.18.0.0/16 and fd00:18::/48.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of a generated rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The nftables family of kube-proxy's table (`ip`, `ip6`).
    pub fn nft_family(self) -> &'static str {
        match self {
            Self::Ipv4 => "ip",
            Self::Ipv6 => "ip6",
        }
    }

    fn host_prefix(self) -> u8 {
        match self {
            Self::Ipv4 => 32,
            Self::Ipv6 => 128,
        }
    }

    fn pod_cidr(self) -> &'static str {
        match self {
            Self::Ipv4 => "198.18.0.0/16",
            Self::Ipv6 => "fd00:18::/48",
        }
    }

    fn reject_with(self) -> &'static str {
        match self {
            Self::Ipv4 => "icmp-port-unreachable",
            Self::Ipv6 => "icmp6-port-unreachable",
        }
    }
}

/// The name of kube-proxy's nftables table.
pub const NFT_TABLE: &str = "kube-proxy";

/// The protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// As iptables and nft spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One generated Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedService {
    /// `namespace/name:port-name`, as in kube-proxy's comments.
    pub port_name: String,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub endpoints: Vec<(IpAddr, u16)>,
    /// `KUBE-SVC-<hash>`.
    pub svc_chain: String,
}

impl GeneratedService {
    /// A Service port with given endpoints (for rules that must really DNAT to pods a
    /// test runs), named like kube-proxy's.
    pub fn new(
        port_name: &str,
        cluster_ip: IpAddr,
        port: u16,
        protocol: Protocol,
        endpoints: Vec<(IpAddr, u16)>,
    ) -> Self {
        Self {
            svc_chain: chain_name("KUBE-SVC-", &format!("{port_name}{}", protocol.name())),
            port_name: port_name.to_owned(),
            cluster_ip,
            port,
            protocol,
            endpoints,
        }
    }

    /// `KUBE-SEP-<hash>` of endpoint `index`.
    pub fn sep_chain(&self, index: usize) -> String {
        let (addr, port) = self.endpoints[index];
        chain_name("KUBE-SEP-", &format!("{}{addr}:{port}", self.port_name))
    }
}

/// A generator of kube-proxy rules: `services` TCP Services on port 80, each with
/// `endpoints_per_service` endpoints on port 8080 (0 gives REJECT rules, as kube-proxy
/// writes for a Service without endpoints).
#[derive(Clone, Debug)]
pub struct KubeProxyRules {
    pub family: Family,
    pub services: u32,
    pub endpoints_per_service: u32,
    /// Given services instead of generated ones (`with_services`).
    given: Option<Vec<GeneratedService>>,
}

/// The highest number of services the ClusterIP range holds here.
pub const MAX_SERVICES: u32 = 32_000;

impl KubeProxyRules {
    pub fn new(family: Family, services: u32, endpoints_per_service: u32) -> Self {
        assert!(services <= MAX_SERVICES, "at most {MAX_SERVICES} services");
        Self {
            family,
            services,
            endpoints_per_service,
            given: None,
        }
    }

    /// Rules for exactly `services` (of `family`; their addresses must be in the test
    /// ranges, see the module comment).
    pub fn with_services(family: Family, services: Vec<GeneratedService>) -> Self {
        Self {
            family,
            services: services.len() as u32,
            endpoints_per_service: 0,
            given: Some(services),
        }
    }

    /// The services, in order.
    pub fn services(&self) -> Vec<GeneratedService> {
        if let Some(given) = &self.given {
            return given.clone();
        }
        (0..self.services).map(|i| self.service(i)).collect()
    }

    fn service(&self, i: u32) -> GeneratedService {
        let port_name = format!("ns{}/svc{i}:http", i % 10);
        let cluster_ip = self.cluster_ip(i);
        let endpoints = (0..self.endpoints_per_service)
            .map(|j| (self.endpoint_ip(i * self.endpoints_per_service + j), 8080))
            .collect();
        GeneratedService::new(&port_name, cluster_ip, 80, Protocol::Tcp, endpoints)
    }

    /// Service `i`'s ClusterIP: 198.19.0.0/17 from .0.1 on, fd00:19::1 on.
    fn cluster_ip(&self, i: u32) -> IpAddr {
        let n = i + 1;
        match self.family {
            Family::Ipv4 => Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8).into(),
            Family::Ipv6 => {
                Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, (n >> 16) as u16, n as u16).into()
            }
        }
    }

    /// Endpoint number `g` overall: spread over pod CIDRs 198.18.<node>.0/24, hosts 2..=253.
    fn endpoint_ip(&self, g: u32) -> IpAddr {
        let node = (g / 252) % 256;
        let host = g % 252 + 2;
        match self.family {
            Family::Ipv4 => Ipv4Addr::new(198, 18, node as u8, host as u8).into(),
            Family::Ipv6 => Ipv6Addr::new(
                0xfd00,
                0x18,
                0,
                node as u16,
                0,
                0,
                (g >> 16) as u16,
                g as u16,
            )
            .into(),
        }
    }

    /// Every `KUBE-*` chain this rule set creates, as (table, chain).
    pub fn iptables_chains(&self) -> Vec<(&'static str, String)> {
        let mut chains: Vec<(&'static str, String)> = NAT_CHAINS
            .iter()
            .map(|c| ("nat", (*c).to_owned()))
            .collect();
        for svc in self.services() {
            chains.push(("nat", svc.svc_chain.clone()));
            chains.extend((0..svc.endpoints.len()).map(|k| ("nat", svc.sep_chain(k))));
        }
        chains.extend(FILTER_CHAINS.iter().map(|c| ("filter", (*c).to_owned())));
        if self.family == Family::Ipv4 {
            chains.push(("filter", "KUBE-FIREWALL".to_owned()));
        }
        chains.push(("mangle", "KUBE-PROXY-CANARY".to_owned()));
        chains
    }

    /// `iptables-restore` input (use `--noflush` to keep what the tables already hold).
    pub fn iptables_restore(&self) -> String {
        let mut out = String::new();
        self.write_nat(&mut out);
        self.write_filter(&mut out);
        out.push_str("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n");
        out
    }

    fn write_nat(&self, out: &mut String) {
        let services = self.services();
        let host = self.family.host_prefix();
        out.push_str("*nat\n");
        for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
            let _ = writeln!(out, ":{chain} ACCEPT [0:0]");
        }
        for chain in NAT_CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for svc in &services {
            let _ = writeln!(out, ":{} - [0:0]", svc.svc_chain);
            for k in 0..svc.endpoints.len() {
                let _ = writeln!(out, ":{} - [0:0]", svc.sep_chain(k));
            }
        }
        out.push_str(concat!(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
            "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
            "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
        ));
        for svc in services.iter().filter(|s| !s.endpoints.is_empty()) {
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -d {}/{host} -p {p} -m comment --comment \"{} cluster IP\" -m {p} --dport {} -j {}",
                svc.cluster_ip, svc.port_name, svc.port, svc.svc_chain, p = svc.protocol.name()
            );
        }
        out.push_str(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
        );
        for svc in services.iter().filter(|s| !s.endpoints.is_empty()) {
            let _ = writeln!(
                out,
                "-A {} ! -s {} -d {}/{host} -p {p} -m comment --comment \"{} cluster IP\" -m {p} --dport {} -j KUBE-MARK-MASQ",
                svc.svc_chain,
                self.family.pod_cidr(),
                svc.cluster_ip,
                svc.port_name,
                svc.port,
                p = svc.protocol.name()
            );
            let n = svc.endpoints.len();
            for (k, (addr, port)) in svc.endpoints.iter().enumerate() {
                let sep = svc.sep_chain(k);
                let comment = format!("{} -> {}", svc.port_name, endpoint_text(*addr, *port));
                if k + 1 < n {
                    let probability = 1.0 / (n - k) as f64;
                    let _ = writeln!(
                        out,
                        "-A {} -m comment --comment \"{comment}\" -m statistic --mode random --probability {probability:.11} -j {sep}",
                        svc.svc_chain
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "-A {} -m comment --comment \"{comment}\" -j {sep}",
                        svc.svc_chain
                    );
                }
            }
            for (k, (addr, port)) in svc.endpoints.iter().enumerate() {
                let sep = svc.sep_chain(k);
                let _ = writeln!(
                    out,
                    "-A {sep} -s {addr}/{host} -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
                    svc.port_name
                );
                let _ = writeln!(
                    out,
                    "-A {sep} -p {p} -m comment --comment \"{}\" -m {p} -j DNAT --to-destination {}",
                    svc.port_name,
                    endpoint_text(*addr, *port),
                    p = svc.protocol.name()
                );
            }
        }
        out.push_str("COMMIT\n");
    }

    fn write_filter(&self, out: &mut String) {
        let host = self.family.host_prefix();
        out.push_str("*filter\n");
        for chain in ["INPUT", "FORWARD", "OUTPUT"] {
            let _ = writeln!(out, ":{chain} ACCEPT [0:0]");
        }
        for chain in FILTER_CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        if self.family == Family::Ipv4 {
            out.push_str(":KUBE-FIREWALL - [0:0]\n");
        }
        out.push_str(concat!(
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        ));
        if self.family == Family::Ipv4 {
            out.push_str(concat!(
                "-A INPUT -j KUBE-FIREWALL\n",
                "-A OUTPUT -j KUBE-FIREWALL\n",
                "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
            ));
        }
        for svc in self.services().iter().filter(|s| s.endpoints.is_empty()) {
            let _ = writeln!(
                out,
                "-A KUBE-SERVICES -d {}/{host} -p {p} -m comment --comment \"{} has no endpoints\" -m {p} --dport {} -j REJECT --reject-with {}",
                svc.cluster_ip,
                svc.port_name,
                svc.port,
                self.family.reject_with(),
                p = svc.protocol.name()
            );
        }
        out.push_str("COMMIT\n");
    }

    /// `nft -f` input creating kube-proxy's table for this family.
    pub fn nft_script(&self) -> String {
        let family = self.family.nft_family();
        let addr_type = match self.family {
            Family::Ipv4 => "ipv4_addr",
            Family::Ipv6 => "ipv6_addr",
        };
        let services = self.services();
        let mut out = String::new();
        let _ = writeln!(out, "table {family} {NFT_TABLE} {{");
        out.push_str("\tcomment \"rules for kube-proxy\"\n");
        out.push_str(concat!(
            "\tchain mark-for-masquerade {\n\t\tmeta mark set meta mark or 0x4000\n\t}\n",
            "\tchain masquerading {\n\t\tmeta mark & 0x4000 == 0 return\n",
            "\t\tmeta mark set meta mark xor 0x4000\n\t\tmasquerade fully-random\n\t}\n",
        ));
        for svc in &services {
            for (k, (addr, port)) in svc.endpoints.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "\tchain {} {{\n\t\t{family} saddr {addr} jump mark-for-masquerade\n\t\tmeta l4proto {} dnat to {}\n\t}}",
                    nft_endpoint_chain(svc, k),
                    svc.protocol.name(),
                    endpoint_text(*addr, *port)
                );
            }
            let _ = writeln!(out, "\tchain {} {{", nft_service_chain(svc));
            let _ = writeln!(
                out,
                "\t\t{family} daddr {} {} dport {} {family} saddr != {} jump mark-for-masquerade",
                svc.cluster_ip,
                svc.protocol.name(),
                svc.port,
                self.family.pod_cidr()
            );
            if !svc.endpoints.is_empty() {
                let arms: Vec<String> = (0..svc.endpoints.len())
                    .map(|k| format!("{k} : goto {}", nft_endpoint_chain(svc, k)))
                    .collect();
                let _ = writeln!(
                    out,
                    "\t\tnumgen random mod {} vmap {{ {} }}",
                    svc.endpoints.len(),
                    arms.join(", ")
                );
            }
            out.push_str("\t}\n");
        }
        let _ = writeln!(
            out,
            "\tmap service-ips {{\n\t\ttype {addr_type} . inet_proto . inet_service : verdict\n\t\tcomment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\""
        );
        let elements: Vec<String> = services
            .iter()
            .map(|s| {
                format!(
                    "{} . {} . {} : goto {}",
                    s.cluster_ip,
                    s.protocol.name(),
                    s.port,
                    nft_service_chain(s)
                )
            })
            .collect();
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(",\n\t\t\t"));
        }
        out.push_str("\t}\n");
        let _ = writeln!(
            out,
            "\tchain services {{\n\t\t{family} daddr . meta l4proto . th dport vmap @service-ips\n\t}}"
        );
        out.push_str(concat!(
            "\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n",
            "\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n",
            "\tchain nat-postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump masquerading\n\t}\n",
        ));
        out.push_str("}\n");
        out
    }
}

/// Chains every rule set has in nat, besides the per-service ones.
const NAT_CHAINS: [&str; 5] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-PROXY-CANARY",
];

/// Chains every rule set has in filter (KUBE-FIREWALL is IPv4 only).
const FILTER_CHAINS: [&str; 6] = [
    "KUBE-PROXY-FIREWALL",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-SERVICES",
    "KUBE-FORWARD",
    "KUBE-PROXY-CANARY",
];

fn endpoint_text(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn nft_service_chain(svc: &GeneratedService) -> String {
    let hash = &svc.svc_chain["KUBE-SVC-".len()..];
    format!(
        "service-{}-{}",
        &hash[..8],
        nft_safe(&svc.port_name, svc.protocol)
    )
}

fn nft_endpoint_chain(svc: &GeneratedService, k: usize) -> String {
    let sep = svc.sep_chain(k);
    let hash = &sep["KUBE-SEP-".len()..];
    format!(
        "endpoint-{}-{}",
        &hash[..8],
        nft_safe(&svc.port_name, svc.protocol)
    )
}

/// kube-proxy's `ns/name/proto/port` style, with characters nft identifiers take.
fn nft_safe(port_name: &str, protocol: Protocol) -> String {
    port_name.replace(':', &format!("/{}/", protocol.name()))
}

/// `<prefix><16 base32 characters>` from a hash of `key`, like kube-proxy's chain names
/// (which hash with SHA-256; any stable hash gives the same shape).
fn chain_name(prefix: &str, key: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in key.bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    let mut name = String::from(prefix);
    for i in 0..16 {
        name.push(ALPHABET[((hash >> (5 * i)) & 31) as usize] as char);
    }
    name
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn chain_names_are_stable_unique_and_kube_proxy_shaped() {
        let rules = KubeProxyRules::new(Family::Ipv4, 50, 4);
        let chains = rules.iptables_chains();
        let unique: BTreeSet<_> = chains.iter().collect();
        assert_eq!(unique.len(), chains.len(), "no chain declared twice");
        let svc = &rules.services()[7];
        assert_eq!(svc.svc_chain.len(), "KUBE-SVC-".len() + 16);
        assert_eq!(svc.svc_chain, rules.services()[7].svc_chain);
        assert_eq!(
            chains
                .iter()
                .filter(|(_, c)| c.starts_with("KUBE-SEP-"))
                .count(),
            200
        );
    }

    #[test]
    fn every_declared_chain_is_listed_and_every_listed_chain_declared() {
        for family in [Family::Ipv4, Family::Ipv6] {
            let rules = KubeProxyRules::new(family, 3, 2);
            let text = rules.iptables_restore();
            let mut table = "";
            let mut declared = BTreeSet::new();
            for line in text.lines() {
                if let Some(t) = line.strip_prefix('*') {
                    table = match t {
                        "nat" => "nat",
                        "filter" => "filter",
                        "mangle" => "mangle",
                        other => panic!("unexpected table {other}"),
                    };
                } else if let Some(decl) = line.strip_prefix(':') {
                    let name = decl.split_whitespace().next().unwrap();
                    if name.starts_with("KUBE-") {
                        declared.insert((table, name.to_owned()));
                    }
                }
            }
            let listed: BTreeSet<_> = rules.iptables_chains().into_iter().collect();
            assert_eq!(declared, listed, "{family:?}");
        }
    }

    #[test]
    fn probabilities_give_each_endpoint_an_equal_share() {
        let rules = KubeProxyRules::new(Family::Ipv4, 1, 4);
        let text = rules.iptables_restore();
        let probabilities: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split("--probability ").nth(1))
            .map(|p| p.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(probabilities.len(), 3, "the last endpoint takes the rest");
        // Chance of reaching rule k and taking it: 1/4 each.
        let mut remaining = 1.0;
        for p in probabilities {
            assert!((remaining * p - 0.25).abs() < 1e-9);
            remaining *= 1.0 - p;
        }
        assert!((remaining - 0.25).abs() < 1e-9);
    }

    #[test]
    fn addresses_stay_in_the_test_ranges() {
        for family in [Family::Ipv4, Family::Ipv6] {
            let rules = KubeProxyRules::new(family, 300, 3);
            for svc in rules.services() {
                match svc.cluster_ip {
                    IpAddr::V4(a) => {
                        assert_eq!(a.octets()[..2], [198, 19]);
                        assert!(a.octets()[2] < 128, "{a} outside 198.19.0.0/17");
                    }
                    IpAddr::V6(a) => assert_eq!(a.segments()[..6], [0xfd00, 0x19, 0, 0, 0, 0]),
                }
                for (addr, _) in &svc.endpoints {
                    match addr {
                        IpAddr::V4(a) => assert_eq!(a.octets()[..2], [198, 18]),
                        IpAddr::V6(a) => assert_eq!(a.segments()[..3], [0xfd00, 0x18, 0]),
                    }
                }
            }
        }
    }

    #[test]
    fn services_without_endpoints_get_a_reject_and_no_svc_chain_jump() {
        let rules = KubeProxyRules::new(Family::Ipv6, 2, 0);
        let text = rules.iptables_restore();
        assert_eq!(
            text.matches("-j REJECT --reject-with icmp6-port-unreachable")
                .count(),
            2
        );
        assert!(!text.contains("-j KUBE-SVC-"));
    }

    #[test]
    fn the_nft_script_names_its_table_and_maps_every_service() {
        let rules = KubeProxyRules::new(Family::Ipv4, 5, 2);
        let script = rules.nft_script();
        assert!(script.starts_with("table ip kube-proxy {"));
        assert_eq!(script.matches(" . tcp . 80 : goto service-").count(), 5);
        assert_eq!(script.matches("dnat to 198.18.").count(), 10);
    }
}
