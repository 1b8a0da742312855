//! What to remove from an iptables dump (pure): kube-proxy's `KUBE-*` chains and every rule
//! elsewhere that jumps into them, as an `iptables-restore --noflush` script.
//!
//! Ownership: every user chain named `KUBE-*` in the tables kube-proxy writes (nat, filter,
//! mangle) is kube-proxy's, except the two that kubelet creates and watches
//! ([`KUBELET_CHAINS`]): kubelet recreates its rules when its canary disappears, so removing
//! them would only make it redo its work. Nothing else is touched: other chains lose only
//! their rules that jump into a removed chain (a chain that is still referenced cannot be
//! deleted).

use std::collections::BTreeSet;

use super::iptables_save::{Rule, Table};

/// Tables kube-proxy writes in its iptables mode.
pub const KUBE_PROXY_TABLES: [&str; 3] = ["nat", "filter", "mangle"];
/// Prefix of every chain kube-proxy (and kubelet) creates.
pub const KUBE_PREFIX: &str = "KUBE-";
/// `KUBE-*` chains that belong to kubelet, not kube-proxy.
pub const KUBELET_CHAINS: [&str; 2] = ["KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"];

/// What to do in one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub table: String,
    /// Rules outside the removed chains that jump into one of them, deleted first.
    pub jumps: Vec<Rule>,
    /// kube-proxy's chains, flushed and then deleted (declaration order).
    pub chains: Vec<String>,
    /// `KUBE-*` chains left alone because kubelet owns them.
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

/// True for a chain this command removes.
pub fn is_kube_proxy_chain(name: &str) -> bool {
    name.starts_with(KUBE_PREFIX) && !KUBELET_CHAINS.contains(&name)
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
:KUBE-SVC-AAA - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 198.18.9.0/24 -m comment --comment "-j KUBE-SERVICES in a comment" -j FOREIGN
-A FOREIGN -j KUBE-POSTROUTING
-A FOREIGN -j RETURN
-A KUBE-SERVICES -d 198.19.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AAA
-A KUBE-SVC-AAA -j DNAT --to-destination 198.18.1.2:80
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
:KUBE-ODD - [0:0]
-A PREROUTING -j KUBE-ODD
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"#;

    #[test]
    fn removes_kube_chains_and_every_jump_into_them() {
        let plans = plan(&parse(DUMP).unwrap());
        assert_eq!(
            plans.len(),
            1,
            "raw is not kube-proxy's, filter has nothing"
        );
        let nat = &plans[0];
        assert_eq!(nat.table, "nat");
        assert_eq!(
            nat.chains,
            ["KUBE-POSTROUTING", "KUBE-SERVICES", "KUBE-SVC-AAA"]
        );
        assert_eq!(nat.kept, ["KUBE-KUBELET-CANARY"]);
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
-F KUBE-SVC-AAA
-X KUBE-POSTROUTING
-X KUBE-SERVICES
-X KUBE-SVC-AAA
COMMIT
"#;
        assert_eq!(script, expected);
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
