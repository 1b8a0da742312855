//! What kube-proxy's IPVS mode leaves besides iptables chains: the `kube-ipvs0` dummy
//! interface (holding every ClusterIP), its ipsets (by kube-proxy's exact names, from
//! `pkg/proxy/ipvs/ipset.go`: IPv6 sets carry `KUBE-6-` instead of `KUBE-`), and the IPVS
//! virtual servers (listed only; this kernel may not even have IPVS).

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

#[cfg(test)]
mod tests {
    use super::*;

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
