//! What to remove from an iptables dump (pure): kube-proxy's chains, by their exact names,
//! and every rule elsewhere that jumps into them, as an `iptables-restore --noflush` script.
//!
//! Ownership follows kube-proxy's own source (`pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/ipvs/proxier.go`, the chain constants, `isServiceChainName` and
//! `CleanupLeftovers`): the fixed chains in [`KUBE_PROXY_CHAINS`] and the per-service
//! chains whose names start with one of [`KUBE_PROXY_CHAIN_PREFIXES`]. Every other
//! `KUBE-*` chain is somebody else's and stays: kubelet's ([`KUBELET_CHAINS`], which
//! kube-proxy itself never deletes), kube-router's `KUBE-ROUTER-*`, k3s's, ... Other chains
//! lose only their rules that jump into a removed chain (a chain that is still referenced
//! cannot be deleted).

use std::collections::BTreeSet;

use super::iptables_save::{Rule, Table};

/// Tables kube-proxy writes in its iptables and IPVS modes.
pub const KUBE_PROXY_TABLES: [&str; 3] = ["nat", "filter", "mangle"];
/// kube-proxy's fixed chains. iptables mode: services, external services, node ports,
/// postrouting, mark-for-masquerade, forward, load-balancer firewall, the canary
/// (`iptables.Monitor`, in mangle, nat and filter). IPVS mode adds the rest.
pub const KUBE_PROXY_CHAINS: [&str; 13] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    // IPVS mode.
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
];
/// kube-proxy's per-service chains: cluster policy (`KUBE-SVC-`), local policy
/// (`KUBE-SVL-`), endpoint (`KUBE-SEP-`), source-range firewall (`KUBE-FW-`), external
/// (`KUBE-EXT-`), each followed by a 16-character hash.
pub const KUBE_PROXY_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-EXT-",
];
/// Prefix shared by kube-proxy's, kubelet's and others' chains (reporting only).
pub const KUBE_PREFIX: &str = "KUBE-";
/// `KUBE-*` chains that belong to kubelet, not kube-proxy: its canary, the iptables
/// back-end hint, and `KUBE-FIREWALL` (the localnet guard kubelet creates; kube-proxy
/// writes an identical copy but leaves it to kubelet in its own clean-up).
pub const KUBELET_CHAINS: [&str; 3] =
    ["KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT", "KUBE-FIREWALL"];

/// The hash part of a per-service chain: base32 (A-Z, 2-7), 16 characters.
fn is_chain_hash(rest: &str) -> bool {
    rest.len() == 16
        && rest
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// What to do in one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub table: String,
    /// Rules outside the removed chains that jump into one of them, deleted first.
    pub jumps: Vec<Rule>,
    /// kube-proxy's chains, flushed and then deleted (declaration order).
    pub chains: Vec<String>,
    /// `KUBE-*` chains left alone: kubelet's or another component's.
    pub kept: Vec<String>,
}

impl TablePlan {
    /// Nothing to remove in this table.
    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty()
    }

    /// The `iptables-restore --noflush` input that applies this plan in one transaction:
    /// delete the jumps, flush every removed chain (so none references another), delete
    /// them.
    pub fn restore_script(&self) -> String {
        let mut script = format!("*{}\n", self.table);
        for rule in &self.jumps {
            script.push_str(&format!("-D {} {}\n", rule.chain, rule.spec));
        }
        for chain in &self.chains {
            script.push_str(&format!("-F {chain}\n"));
        }
        for chain in &self.chains {
            script.push_str(&format!("-X {chain}\n"));
        }
        script.push_str("COMMIT\n");
        script
    }
}

/// True for a chain this command removes: one of kube-proxy's by its exact name.
pub fn is_kube_proxy_chain(name: &str) -> bool {
    KUBE_PROXY_CHAINS.contains(&name)
        || KUBE_PROXY_CHAIN_PREFIXES
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(is_chain_hash))
}

/// Why a `KUBE-*` chain that is not removed stays (for the listing).
pub fn kept_because(name: &str) -> &'static str {
    if KUBELET_CHAINS.contains(&name) {
        "kubelet's"
    } else {
        "not kube-proxy's"
    }
}

/// One plan per kube-proxy table present in the dump that has something removed or kept.
pub fn plan(tables: &[Table]) -> Vec<TablePlan> {
    tables
        .iter()
        .filter(|t| KUBE_PROXY_TABLES.contains(&t.name.as_str()))
        .map(plan_table)
        .filter(|p| !p.is_empty() || !p.kept.is_empty())
        .collect()
}

fn plan_table(table: &Table) -> TablePlan {
    let user_chains = table.chains.iter().filter(|c| !c.builtin);
    let chains: Vec<String> = user_chains
        .clone()
        .filter(|c| is_kube_proxy_chain(&c.name))
        .map(|c| c.name.clone())
        .collect();
    let kept = user_chains
        .filter(|c| c.name.starts_with(KUBE_PREFIX) && !is_kube_proxy_chain(&c.name))
        .map(|c| c.name.clone())
        .collect();
    let removed: BTreeSet<&str> = chains.iter().map(String::as_str).collect();
    let jumps = table
        .rules
        .iter()
        .filter(|r| !removed.contains(r.chain.as_str()))
        .filter(|r| r.target.as_deref().is_some_and(|t| removed.contains(t)))
        .cloned()
        .collect();
    TablePlan {
        table: table.name.clone(),
        jumps,
        chains,
        kept,
    }
}

#[cfg(test)]
mod tests {
    use super::super::iptables_save::parse;
    use super::*;

    const DUMP: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FOREIGN - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABCDEFGH234567AB - [0:0]
:KUBE-ROUTER-SERVICES - [0:0]
:KUBE-SVC-NOTAHASH - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 198.18.9.0/24 -m comment --comment "-j KUBE-SERVICES in a comment" -j FOREIGN
-A FOREIGN -j KUBE-POSTROUTING
-A FOREIGN -j RETURN
-A PREROUTING -j KUBE-ROUTER-SERVICES
-A KUBE-ROUTER-SERVICES -j KUBE-SVC-NOTAHASH
-A KUBE-SERVICES -d 198.19.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-ABCDEFGH234567AB
-A KUBE-SVC-ABCDEFGH234567AB -j DNAT --to-destination 198.18.1.2:80
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:KUBE-ODD - [0:0]
-A PREROUTING -j KUBE-ODD
COMMIT
*filter
:INPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -j KUBE-FIREWALL
COMMIT
"#;

    #[test]
    fn removes_kube_chains_and_every_jump_into_them() {
        let plans = plan(&parse(DUMP).unwrap());
        assert_eq!(
            plans.len(),
            2,
            "raw is not kube-proxy's, filter has only kubelet's KUBE-FIREWALL"
        );
        assert!(plans[1].is_empty());
        assert_eq!(plans[1].kept, ["KUBE-FIREWALL"]);
        let nat = &plans[0];
        assert_eq!(nat.table, "nat");
        assert_eq!(
            nat.chains,
            [
                "KUBE-POSTROUTING",
                "KUBE-SERVICES",
                "KUBE-SVC-ABCDEFGH234567AB"
            ]
        );
        assert_eq!(
            nat.kept,
            [
                "KUBE-KUBELET-CANARY",
                "KUBE-ROUTER-SERVICES",
                "KUBE-SVC-NOTAHASH"
            ],
            "kubelet's and kube-router's chains stay, and so does a KUBE-SVC- without a hash"
        );
        let jumps: Vec<(&str, Option<&str>)> = nat
            .jumps
            .iter()
            .map(|r| (r.chain.as_str(), r.target.as_deref()))
            .collect();
        assert_eq!(
            jumps,
            [
                ("PREROUTING", Some("KUBE-SERVICES")),
                ("OUTPUT", Some("KUBE-SERVICES")),
                ("POSTROUTING", Some("KUBE-POSTROUTING")),
                ("FOREIGN", Some("KUBE-POSTROUTING")),
            ],
            "the foreign rule whose comment mentions KUBE-SERVICES stays"
        );
    }

    #[test]
    fn the_restore_script_deletes_jumps_then_flushes_then_deletes() {
        let plans = plan(&parse(DUMP).unwrap());
        let script = plans[0].restore_script();
        let expected = r#"*nat
-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-D OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-D POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-D FOREIGN -j KUBE-POSTROUTING
-F KUBE-POSTROUTING
-F KUBE-SERVICES
-F KUBE-SVC-ABCDEFGH234567AB
-X KUBE-POSTROUTING
-X KUBE-SERVICES
-X KUBE-SVC-ABCDEFGH234567AB
COMMIT
"#;
        assert_eq!(script, expected);
    }

    #[test]
    fn ownership_is_by_exact_name() {
        for theirs in [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-CANARY",
            "KUBE-IPVS-OUT-FILTER",
            "KUBE-SEP-Q7Z2XPEOAOB3BJH3",
            "KUBE-SVL-AAAAAAAAAAAAAAAA",
            "KUBE-EXT-Q7Z2XPEOAOB3BJH3",
            "KUBE-FW-Q7Z2XPEOAOB3BJH3",
        ] {
            assert!(is_kube_proxy_chain(theirs), "{theirs}");
        }
        for other in [
            "KUBE-FIREWALL",
            "KUBE-KUBELET-CANARY",
            "KUBE-IPTABLES-HINT",
            "KUBE-MARK-DROP",
            "KUBE-ROUTER-INPUT",
            "KUBE-POD-FW-Q7Z2XPEOAOB3BJH3",
            "KUBE-SVC-short",
            "KUBE-SEP-Q7Z2XPEOAOB3BJH3X",
            "KUBE-SVC-q7z2xpeoaob3bjh3",
            "KUBE-SERVICES-X",
        ] {
            assert!(!is_kube_proxy_chain(other), "{other}");
        }
        assert_eq!(kept_because("KUBE-FIREWALL"), "kubelet's");
        assert_eq!(kept_because("KUBE-ROUTER-INPUT"), "not kube-proxy's");
    }

    #[test]
    fn a_clean_dump_plans_nothing() {
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
        let plans = plan(&parse(clean).unwrap());
        assert_eq!(plans.len(), 1);
        assert!(plans[0].is_empty());
        assert_eq!(plans[0].kept, ["KUBE-KUBELET-CANARY"]);
        assert!(plan(&parse("").unwrap()).is_empty());
    }

    #[test]
    fn builtin_chains_are_never_removed() {
        // A built-in chain cannot be named KUBE-*, but a policy marks it built-in anyway.
        let dump = "*filter\n:KUBE-WEIRD ACCEPT [0:0]\nCOMMIT\n";
        assert!(plan(&parse(dump).unwrap()).is_empty());
    }
}
