//! Helpers of the operator-journey tests (switch-over, roll-back, upgrade): running a
//! command inside a test namespace (`nsenter --net=`, never `ip netns exec`), installing
//! kube-proxy's rules for the Services a test runs, and building an earlier version of the
//! daemon (see `prev_release`).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

use crate::kube_proxy_rules::{Family, KubeProxyRules};
use crate::netns::NetNs;

pub mod prev_release;

/// `nsenter --net=<ns> <program> <args>` with `stdin` fed; fails on a non-zero exit
/// (the message has both outputs).
pub fn in_ns(ns: &NetNs, program: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let out = in_ns_status(ns, program, args, stdin)?;
    if !out.status.success() {
        bail!(
            "{} {} in {} failed ({}): {}{}",
            program.display(),
            args.join(" "),
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `in_ns` that returns whatever the program exited with.
pub fn in_ns_status(
    ns: &NetNs,
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display()))
        .arg(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let described = format!("{} {}", program.display(), args.join(" "));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {described}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("feeding {described}"))?;
    }
    child
        .wait_with_output()
        .with_context(|| format!("waiting for {described}"))
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Which of kube-proxy's modes wrote the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// `iptables-restore --noflush` / `ip6tables-restore --noflush`, as kube-proxy's
    /// iptables mode does at every sync.
    Iptables,
    /// `nft -f`, as kube-proxy's nftables mode does.
    Nftables,
}

impl ProxyMode {
    /// Whether the tools of this mode are installed.
    pub fn available(self) -> bool {
        let tools: &[&str] = match self {
            Self::Iptables => &["iptables-restore", "ip6tables-restore", "iptables"],
            Self::Nftables => &["nft"],
        };
        tools.iter().all(|t| has(t))
    }
}

/// Writes `rules` (one per family) into `ns` the way kube-proxy in `mode` does, at its
/// start or at any sync (so this is also how a roll-back re-applies them).
pub fn apply_kube_proxy_rules(ns: &NetNs, mode: ProxyMode, rules: &[KubeProxyRules]) -> Result<()> {
    for r in rules {
        match mode {
            ProxyMode::Iptables => {
                let restore = match r.family {
                    Family::Ipv4 => "iptables-restore",
                    Family::Ipv6 => "ip6tables-restore",
                };
                in_ns(
                    ns,
                    Path::new(restore),
                    &["--noflush"],
                    Some(&r.iptables_restore()),
                )?;
            }
            ProxyMode::Nftables => {
                // kube-proxy's nftables mode rewrites its table on start: flush + fill,
                // in one transaction (`add` makes sure the table exists first). Flushing,
                // not deleting, keeps its base chains (and their NAT hooks) registered.
                let family = r.family.nft_family();
                let script = format!(
                    "add table {family} {table}\nflush table {family} {table}\n{}",
                    r.nft_script(),
                    table = crate::kube_proxy_rules::NFT_TABLE
                );
                in_ns(ns, Path::new("nft"), &["-f", "-"], Some(&script))?;
            }
        }
    }
    Ok(())
}

/// What a CNI plugin writes into every node's nat table (flannel's and Calico's
/// masquerade of pod traffic leaving the pod network; addresses from the test ranges):
/// present on a real node before, during and after kube-proxy.
pub const CNI_NAT_V4: &str = "*nat\n:CNI-TEST-MASQ - [0:0]\n-A POSTROUTING -s 198.18.0.0/15 -m comment --comment \"cni masquerade\" -j CNI-TEST-MASQ\n-A CNI-TEST-MASQ -d 198.18.0.0/15 -j RETURN\n-A CNI-TEST-MASQ -j MASQUERADE\nCOMMIT\n";
pub const CNI_NAT_V6: &str = "*nat\n:CNI-TEST-MASQ - [0:0]\n-A POSTROUTING -s fd00:18::/32 -m comment --comment \"cni masquerade\" -j CNI-TEST-MASQ\n-A CNI-TEST-MASQ -d fd00::/16 -j RETURN\n-A CNI-TEST-MASQ -j MASQUERADE\nCOMMIT\n";

/// Writes the CNI's nat rules ([`CNI_NAT_V4`], [`CNI_NAT_V6`]) into `ns`.
pub fn apply_cni_nat(ns: &NetNs) -> Result<()> {
    in_ns(
        ns,
        Path::new("iptables-restore"),
        &["--noflush"],
        Some(CNI_NAT_V4),
    )?;
    in_ns(
        ns,
        Path::new("ip6tables-restore"),
        &["--noflush"],
        Some(CNI_NAT_V6),
    )?;
    Ok(())
}

/// Packets counted by the rules of `KUBE-SERVICES` (nat) that jump to a service chain, in
/// `family` (iptables mode): the nat table sees the first packet of each new conntrack
/// entry, so this counts the flows kube-proxy's rules translated.
pub fn iptables_service_hits(ns: &NetNs, family: Family) -> Result<u64> {
    let program = match family {
        Family::Ipv4 => "iptables",
        Family::Ipv6 => "ip6tables",
    };
    let out = in_ns(
        ns,
        Path::new(program),
        &["-t", "nat", "-L", "KUBE-SERVICES", "-v", "-x", "-n"],
        None,
    )?;
    let mut total = 0;
    for line in stdout(&out).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() > 2 && words[2].starts_with("KUBE-SVC-") {
            total += words[0]
                .parse::<u64>()
                .with_context(|| format!("packet count in {line:?}"))?;
        }
    }
    Ok(total)
}

/// Whether `program` is on the PATH.
pub fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
