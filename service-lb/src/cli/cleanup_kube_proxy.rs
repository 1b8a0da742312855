//! `service-lb cleanup-kube-proxy [--dry-run]`: remove what kube-proxy left in this network
//! namespace once service-lb replaces it: its iptables chains, by their exact names (see
//! `plan`: nat, filter and mangle, IPv4 and IPv6, on every iptables backend that has rules)
//! with the jumps into them, its nftables tables (`ip kube-proxy`, `ip6 kube-proxy`), and
//! its IPVS mode's `kube-ipvs0` interface, ipsets and virtual servers (those on the
//! addresses of `kube-ipvs0`).
//! Idempotent: a second run finds nothing and succeeds. Nothing else is touched: other
//! `KUBE-*` chains (kubelet's, kube-router's, k3s's) are listed as kept.
//!
//! - `iptables_save`: parser of `iptables-save` output (pure);
//! - `plan`: what to remove and the `iptables-restore --noflush` script doing it (pure);
//! - `nft`: which nftables tables are kube-proxy's (pure);
//! - `ipvs`: which ipsets are kube-proxy's (pure);
//! - `tools`: finding and running iptables/nft/ipset/ip/ipvsadm.

pub mod iptables_save;
pub mod ipvs;
pub mod nft;
pub mod plan;
pub mod tools;

use clap::Args;
use thiserror::Error;

use super::Failure;
use plan::TablePlan;
use tools::{Iptables, ToolError};

#[derive(Debug, Args)]
pub struct CleanupKubeProxyArgs {
    /// List what would be removed and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Error)]
pub enum CleanupKubeProxyError {
    #[error("{backend} ({family}): {source}")]
    Iptables {
        backend: String,
        family: &'static str,
        source: ToolError,
    },
    #[error("{backend} ({family}): reading its dump: {source}")]
    Parse {
        backend: String,
        family: &'static str,
        source: iptables_save::ParseError,
    },
    #[error("nftables: {0}")]
    Nft(ToolError),
    #[error("IPVS-mode leftovers: {0}")]
    Ipvs(ToolError),
}

/// What was (or would be) removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub jumps: usize,
    pub chains: usize,
    pub nft_tables: usize,
    /// `kube-ipvs0` and kube-proxy's ipsets.
    pub ipvs_leftovers: usize,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.jumps == 0 && self.chains == 0 && self.nft_tables == 0 && self.ipvs_leftovers == 0
    }
}

pub fn run(args: &CleanupKubeProxyArgs) -> Result<(), Failure> {
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut removed = Removed::default();
    let mut looked_at = Vec::new();

    let (iptables, which) = tools::find_iptables();
    println!("{which}");
    for ipt in &iptables {
        looked_at.push(format!("{} ({})", ipt.label, ipt.family.label()));
        for plan in iptables_plans(ipt)? {
            let whence = format!(
                "{} ({}) table {}",
                ipt.label,
                ipt.family.label(),
                plan.table
            );
            for chain in &plan.kept {
                println!(
                    "kept {whence}: chain {chain} ({})",
                    plan::kept_because(chain)
                );
            }
            if plan.is_empty() {
                continue;
            }
            if !args.dry_run {
                ipt.restore(&plan.restore_script()).map_err(|source| {
                    CleanupKubeProxyError::Iptables {
                        backend: ipt.label.clone(),
                        family: ipt.family.label(),
                        source,
                    }
                })?;
            }
            for rule in &plan.jumps {
                println!("{verb} {whence}: rule -A {} {}", rule.chain, rule.spec);
            }
            for chain in &plan.chains {
                println!("{verb} {whence}: chain {chain}");
            }
            removed.jumps += plan.jumps.len();
            removed.chains += plan.chains.len();
        }
    }

    match tools::find_nft() {
        None => println!("no `nft` installed: no nftables tables to look at"),
        Some(nft) => {
            looked_at.push("nftables".to_owned());
            let listed = tools::nft_list_tables(&nft).map_err(CleanupKubeProxyError::Nft)?;
            for table in nft::kube_proxy_tables(&nft::parse_tables(&listed)) {
                if !args.dry_run {
                    tools::nft_delete_table(&nft, &table.family, &table.name)
                        .map_err(CleanupKubeProxyError::Nft)?;
                }
                println!("{verb} nftables: table {table}");
                removed.nft_tables += 1;
            }
        }
    }

    // After the chains: kube-proxy's IPVS-mode rules reference its ipsets, and a set in
    // use cannot be destroyed.
    removed.ipvs_leftovers = ipvs_leftovers(verb, args.dry_run, &mut looked_at)?;

    if removed.is_empty() {
        println!(
            "nothing of kube-proxy's found (looked at: {})",
            looked_at.join(", ")
        );
        return Ok(());
    }
    println!(
        "{verb}: {} jump rule(s), {} chain(s), {} nftables table(s), {} IPVS-mode leftover(s)",
        removed.jumps, removed.chains, removed.nft_tables, removed.ipvs_leftovers
    );
    if removed.chains > 0 && route_localnet_enabled() {
        tracing::warn!(
            "net.ipv4.conf.all.route_localnet is 1 (kube-proxy sets it for localhost \
             NodePorts; kubelet's KUBE-FIREWALL, which guards it, was kept): set it back to \
             0 unless something else on this node needs it"
        );
    }
    Ok(())
}

/// kube-proxy's IPVS virtual servers, `kube-ipvs0` and kube-proxy's ipsets (removed
/// unless `dry_run`). Returns how many were (or would be) removed.
fn ipvs_leftovers(
    verb: &str,
    dry_run: bool,
    looked_at: &mut Vec<String>,
) -> Result<usize, CleanupKubeProxyError> {
    let mut count = 0;
    looked_at.push(format!("interface {}", ipvs::KUBE_IPVS_DEV));
    // Read before the interface goes: its addresses say which virtual servers are
    // kube-proxy's.
    let kube_ipvs0 = ipvs::interface_addresses(&tools::link_addresses(ipvs::KUBE_IPVS_DEV));
    count += ipvs_virtual_servers(verb, dry_run, &kube_ipvs0, looked_at)?;
    if tools::link_exists(ipvs::KUBE_IPVS_DEV) {
        if !dry_run {
            tools::link_delete(ipvs::KUBE_IPVS_DEV).map_err(CleanupKubeProxyError::Ipvs)?;
        }
        println!("{verb} interface {}", ipvs::KUBE_IPVS_DEV);
        count += 1;
    }
    match tools::find_ipset() {
        None => println!("no `ipset` installed: no ipsets to look at"),
        Some(ipset) => {
            looked_at.push("ipsets".to_owned());
            let listed = tools::ipset_names(&ipset).map_err(CleanupKubeProxyError::Ipvs)?;
            let (ours, kept) = ipvs::kube_proxy_ipsets(&listed);
            for name in kept.iter().filter(|n| n.starts_with("KUBE-")) {
                println!("kept ipset {name} (not kube-proxy's)");
            }
            for name in &ours {
                if !dry_run {
                    tools::ipset_destroy(&ipset, name).map_err(CleanupKubeProxyError::Ipvs)?;
                }
                println!("{verb} ipset {name}");
                count += 1;
            }
        }
    }
    Ok(count)
}

/// kube-proxy's IPVS virtual servers: those on an address of `kube-ipvs0` (removed with
/// `ipvsadm -D` unless `dry_run`); others are listed as kept. Untested on a live IPVS
/// kernel (the machines this project is tested on have no IPVS): the selection is tested
/// on recorded `ipvsadm -Sn` output.
fn ipvs_virtual_servers(
    verb: &str,
    dry_run: bool,
    kube_ipvs0: &[std::net::IpAddr],
    looked_at: &mut Vec<String>,
) -> Result<usize, CleanupKubeProxyError> {
    if !tools::ipvs_loaded() {
        return Ok(0);
    }
    let Some(saved) = tools::ipvs_save() else {
        println!(
            "IPVS is loaded in this kernel; install ipvsadm to list and remove kube-proxy's \
             virtual servers (those on the addresses of {})",
            ipvs::KUBE_IPVS_DEV
        );
        return Ok(0);
    };
    looked_at.push("IPVS virtual servers".to_owned());
    let saved = saved.map_err(CleanupKubeProxyError::Ipvs)?;
    let servers = ipvs::virtual_servers(&saved);
    let (ours, kept) = ipvs::kube_proxy_virtual_servers(&servers, kube_ipvs0);
    for vs in &kept {
        println!(
            "kept IPVS virtual server {vs} (not on an address of {})",
            ipvs::KUBE_IPVS_DEV
        );
    }
    for vs in &ours {
        if !dry_run {
            tools::ipvsadm(&vs.delete_args()).map_err(CleanupKubeProxyError::Ipvs)?;
        }
        println!("{verb} IPVS virtual server {vs}");
    }
    Ok(ours.len())
}

/// The plans for one iptables program (one family, one backend).
fn iptables_plans(ipt: &Iptables) -> Result<Vec<TablePlan>, CleanupKubeProxyError> {
    let dump = ipt
        .save()
        .map_err(|source| CleanupKubeProxyError::Iptables {
            backend: ipt.label.clone(),
            family: ipt.family.label(),
            source,
        })?;
    let tables = iptables_save::parse(&dump).map_err(|source| CleanupKubeProxyError::Parse {
        backend: ipt.label.clone(),
        family: ipt.family.label(),
        source,
    })?;
    Ok(plan::plan(&tables))
}

fn route_localnet_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet")
        .is_ok_and(|v| v.trim() == "1")
}
