//! `service-lb cleanup-kube-proxy`, the real binary, in a fresh network namespace holding
//! kube-proxy's rules (generated in its layout, IPv4 and IPv6, iptables and nftables) next to
//! foreign rules, chains and tables that must survive. Every iptables/nft command runs
//! inside the namespace through `nsenter --net=`; the root namespace is never touched.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context as _, Result};
use service_lb::cli::cleanup_kube_proxy::{iptables_save, plan};
use service_lb_tests::{
    kube_proxy_rules::{Family, KubeProxyRules},
    netns::{run_prefix, sweep_leftovers, NetNs},
    privileges::require_root,
};

/// Rules that are not kube-proxy's, loaded with `iptables-restore --noflush`: a foreign
/// chain and rule in nat and filter (one whose comment mentions a KUBE chain), kube-router's
/// `KUBE-ROUTER-*` chains (a `KUBE-` prefix that is not kube-proxy's), and kubelet's canary,
/// which the clean-up leaves to kubelet (as it does kubelet's `KUBE-FIREWALL`, which the
/// generated kube-proxy rules also write, as kube-proxy does).
const FOREIGN_V4: &str = r#"*nat
:FOREIGN-NAT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-ROUTER-SERVICES - [0:0]
-A POSTROUTING -s 198.18.9.0/24 -m comment --comment "foreign: not -j KUBE-SERVICES" -j FOREIGN-NAT
-A FOREIGN-NAT -j RETURN
-A PREROUTING -m comment --comment "kube-router services" -j KUBE-ROUTER-SERVICES
-A KUBE-ROUTER-SERVICES -d 198.19.0.99/32 -p tcp -m tcp --dport 81 -j RETURN
COMMIT
*filter
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-ROUTER-INPUT - [0:0]
-A INPUT -p tcp -m tcp --dport 2222 -m comment --comment "foreign ssh" -j ACCEPT
-A INPUT -m comment --comment "kube-router netpol" -j KUBE-ROUTER-INPUT
-A KUBE-ROUTER-INPUT -s 198.18.9.0/24 -j ACCEPT
COMMIT
"#;
const FOREIGN_V6: &str = r#"*filter
:KUBE-ROUTER-INPUT - [0:0]
-A INPUT -p tcp -m tcp --dport 2222 -m comment --comment "foreign ssh6" -j ACCEPT
-A INPUT -j KUBE-ROUTER-INPUT
-A KUBE-ROUTER-INPUT -s fd00:18:0:9::/64 -j ACCEPT
COMMIT
"#;

/// `KUBE-*` chains that are not kube-proxy's: kubelet's (kube-proxy writes a copy of
/// KUBE-FIREWALL but never deletes it) and kube-router's.
fn not_kube_proxys(chain: &str) -> bool {
    ["KUBE-KUBELET-CANARY", "KUBE-FIREWALL", "KUBE-IPTABLES-HINT"].contains(&chain)
        || chain.starts_with("KUBE-ROUTER-")
}

/// The generated rules' chains that the clean-up must remove.
fn kube_proxy_chains(rules: &KubeProxyRules) -> Vec<(&'static str, String)> {
    rules
        .iptables_chains()
        .into_iter()
        .filter(|(_, c)| !not_kube_proxys(c))
        .collect()
}
const FOREIGN_NFT: &str = "table inet foreign {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport 2223 accept\n\t}\n}\n";

/// `nsenter --net=<ns> <program> <args>` with `stdin` fed; fails on a non-zero exit.
fn in_ns(ns: &NetNs, program: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
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
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{described} in {} failed ({}): {}{}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The iptables programs rules are loaded with, as name prefixes (`<p>-save`,
/// `<p>-restore`): IPv4 on both backends when both are installed (the clean-up must find
/// rules on either), IPv6 on the nf_tables one.
struct Backends {
    v4: Vec<&'static str>,
    v6: &'static str,
}

impl Backends {
    fn find() -> Self {
        if has("iptables-nft-restore") && has("ip6tables-nft-restore") {
            let mut v4 = vec!["iptables-nft"];
            if has("iptables-legacy-restore") {
                v4.push("iptables-legacy");
            }
            Self {
                v4,
                v6: "ip6tables-nft",
            }
        } else {
            Self {
                v4: vec!["iptables"],
                v6: "ip6tables",
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = (&'static str, Family)> + '_ {
        self.v4
            .iter()
            .map(|p| (*p, Family::Ipv4))
            .chain([(self.v6, Family::Ipv6)])
    }
}

/// Everything the clean-up could touch, as text: each backend's iptables dump (key: the
/// program prefix) and the nft ruleset (key: `nft`).
type Snapshot = BTreeMap<String, String>;

fn snapshot(ns: &NetNs, backends: &Backends) -> Result<Snapshot> {
    let mut snap = Snapshot::new();
    for (prefix, _) in backends.all() {
        let save = format!("{prefix}-save");
        let dump = text(&in_ns(ns, Path::new(&save), &[], None)?);
        snap.insert(prefix.to_owned(), strip_comments(&dump));
    }
    let nft = text(&in_ns(ns, Path::new("nft"), &["list", "ruleset"], None)?);
    snap.insert("nft".to_owned(), nft);
    Ok(snap)
}

/// iptables-save's `#` lines carry a timestamp.
fn strip_comments(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn load(ns: &NetNs, backends: &Backends, v4: &KubeProxyRules, v6: &KubeProxyRules) -> Result<()> {
    for (prefix, family) in backends.all() {
        let restore = format!("{prefix}-restore");
        let (rules, foreign) = match family {
            Family::Ipv4 => (v4.iptables_restore(), FOREIGN_V4),
            Family::Ipv6 => (v6.iptables_restore(), FOREIGN_V6),
        };
        for input in [rules.as_str(), foreign] {
            in_ns(ns, Path::new(&restore), &["--noflush"], Some(input))?;
        }
    }
    for script in [v4.nft_script(), v6.nft_script(), FOREIGN_NFT.to_owned()] {
        in_ns(ns, Path::new("nft"), &["-f", "-"], Some(&script))?;
    }
    Ok(())
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn removes_kube_proxys_rules_and_nothing_else_idempotently() -> Result<()> {
    if !require_root("cleanup_kube_proxy") {
        return Ok(());
    }
    if !["iptables-restore", "ip6tables-restore", "nft"]
        .iter()
        .all(|p| has(p))
    {
        let why = "iptables/nftables are not installed: run `cargo xtask setup`";
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            bail!(why);
        }
        eprintln!("skipped: {why}");
        return Ok(());
    }
    sweep_leftovers();
    let binary = service_lb_tests::daemon::service_lb_binary()?;
    let ns = NetNs::create(&format!("{}-kp", run_prefix()))?;
    let backends = Backends::find();
    let v4 = KubeProxyRules::new(Family::Ipv4, 6, 3);
    let v6 = KubeProxyRules::new(Family::Ipv6, 4, 2);
    load(&ns, &backends, &v4, &v6)?;
    let before = snapshot(&ns, &backends)?;
    println!("loaded into: {:?}", before.keys().collect::<Vec<_>>());
    for (prefix, family) in backends.all() {
        let rules = if family == Family::Ipv4 { &v4 } else { &v6 };
        for (table, chain) in rules.iptables_chains() {
            assert!(
                before[prefix].contains(&format!(":{chain} ")),
                "{prefix}: {table} {chain} loaded"
            );
        }
    }
    let ruleset = &before["nft"];
    assert!(ruleset.contains("table ip kube-proxy") && ruleset.contains("table ip6 kube-proxy"));

    // --dry-run: lists everything, changes nothing.
    let dry = text(&in_ns(
        &ns,
        &binary,
        &["cleanup-kube-proxy", "--dry-run"],
        None,
    )?);
    println!("--- dry run ---\n{dry}");
    assert_eq!(
        snapshot(&ns, &backends)?,
        before,
        "--dry-run changed something"
    );
    for (prefix, family) in backends.all() {
        let rules = if family == Family::Ipv4 { &v4 } else { &v6 };
        for (table, chain) in kube_proxy_chains(rules) {
            assert!(
                dry.contains(&format!("{prefix} ("))
                    && dry.contains(&format!("table {table}: chain {chain}\n")),
                "dry run lists {prefix} {table} {chain}"
            );
        }
    }
    assert!(dry.contains("would remove nftables: table ip kube-proxy"));
    assert!(dry.contains("would remove nftables: table ip6 kube-proxy"));
    assert!(dry.contains("kept ") && dry.contains("KUBE-KUBELET-CANARY (kubelet's)"));
    assert!(dry.contains("chain KUBE-FIREWALL (kubelet's)"), "{dry}");
    assert!(
        dry.contains("chain KUBE-ROUTER-INPUT (not kube-proxy's)")
            && dry.contains("chain KUBE-ROUTER-SERVICES (not kube-proxy's)"),
        "{dry}"
    );
    for line in dry.lines().filter(|l| l.starts_with("would remove")) {
        assert!(
            !line.contains("FOREIGN")
                && !line.contains("foreign")
                && !line.contains("KUBE-ROUTER-")
                && !line.contains("KUBE-FIREWALL"),
            "not kube-proxy's: {line}"
        );
    }

    // The real run.
    let first = text(&in_ns(&ns, &binary, &["cleanup-kube-proxy"], None)?);
    println!("--- first run ---\n{first}");
    assert!(first.contains("removed: "), "{first}");
    let after = snapshot(&ns, &backends)?;
    for (prefix, _) in backends.all() {
        for line in after[prefix].lines() {
            assert_eq!(
                parse_owner(line),
                Owner::Foreign,
                "{prefix}: kube-proxy state left: {line}"
            );
        }
        // Every line that was not kube-proxy's is still there.
        for line in before[prefix].lines() {
            if parse_owner(line) == Owner::Foreign {
                assert!(
                    after[prefix].lines().any(|l| l == line),
                    "{prefix}: foreign line lost: {line}"
                );
            }
        }
    }
    for prefix in &backends.v4 {
        let dump = &after[*prefix];
        assert!(dump.contains("-j FOREIGN-NAT") && dump.contains(":KUBE-KUBELET-CANARY "));
        assert!(dump.contains(":KUBE-ROUTER-SERVICES ") && dump.contains("-j KUBE-ROUTER-INPUT"));
        assert!(dump.contains(":KUBE-FIREWALL ") && dump.contains("-A INPUT -j KUBE-FIREWALL"));
    }
    assert!(after[backends.v6].contains("foreign ssh6"));
    assert!(after[backends.v6].contains("-A KUBE-ROUTER-INPUT -s fd00:18:0:9::/64 -j ACCEPT"));
    let after_nft = &after["nft"];
    assert!(!after_nft.contains("kube-proxy"), "{after_nft}");
    assert!(after_nft.contains("table inet foreign") && after_nft.contains("dport 2223"));

    // A second run finds nothing and changes nothing.
    let second = text(&in_ns(&ns, &binary, &["cleanup-kube-proxy"], None)?);
    println!("--- second run ---\n{second}");
    assert!(second.contains("nothing of kube-proxy's found"), "{second}");
    assert_eq!(
        snapshot(&ns, &backends)?,
        after,
        "the second run changed something"
    );
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Owner {
    KubeProxy,
    Foreign,
}

/// Whose a dump line is: kube-proxy's when it declares, fills or jumps into one of its
/// chains (`KUBE-*` but kubelet's and kube-router's); quoted text (comments) does not
/// count.
fn parse_owner(line: &str) -> Owner {
    let unquoted: String = line.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    let words: Vec<&str> = unquoted.split_whitespace().collect();
    let theirs = |w: &str| w.starts_with("KUBE-") && !not_kube_proxys(w);
    let declared = words
        .first()
        .and_then(|w| w.strip_prefix(':'))
        .is_some_and(theirs);
    let in_chain = words.first() == Some(&"-A") && words.get(1).is_some_and(|c| theirs(c));
    let jumps = words
        .windows(2)
        .any(|w| matches!(w[0], "-j" | "-g") && theirs(w[1]));
    if declared || in_chain || jumps {
        Owner::KubeProxy
    } else {
        Owner::Foreign
    }
}

#[test]
fn the_planner_removes_every_generated_chain_and_jump() {
    // Unprivileged: the generator's output through the CLI's own parser and planner.
    for rules in [
        KubeProxyRules::new(Family::Ipv4, 20, 5),
        KubeProxyRules::new(Family::Ipv6, 3, 0),
    ] {
        let tables = iptables_save::parse(&rules.iptables_restore()).expect("parses");
        let plans = plan::plan(&tables);
        let mut planned: Vec<(String, String)> = plans
            .iter()
            .flat_map(|p| p.chains.iter().map(|c| (p.table.clone(), c.clone())))
            .collect();
        let mut generated: Vec<(String, String)> = kube_proxy_chains(&rules)
            .into_iter()
            .map(|(t, c)| (t.to_owned(), c))
            .collect();
        planned.sort();
        generated.sort();
        assert_eq!(planned, generated);
        // The only rules outside kube-proxy's chains are the built-in chains' jumps.
        for p in &plans {
            assert!(p.jumps.iter().all(|r| !r.chain.starts_with("KUBE-")));
        }
        let jumps: usize = plans.iter().map(|p| p.jumps.len()).sum();
        let expected = match rules.family {
            // INPUT/OUTPUT -j KUBE-FIREWALL are kubelet's and stay.
            Family::Ipv4 => 3 + 9,
            Family::Ipv6 => 3 + 9,
        };
        assert_eq!(jumps, expected, "{:?}", rules.family);
    }
}

/// IPVS-mode leftovers in a fresh namespace: kube-proxy's `kube-ipvs0` interface (with a
/// ClusterIP from the test range) is listed by `--dry-run` and removed by the run;
/// another dummy interface stays. With `ipset` installed, kube-proxy's sets (both
/// families' names) go and a foreign `KUBE-`-prefixed one stays.
#[test]
fn removes_ipvs_leftovers_by_exact_name() -> Result<()> {
    if !require_root("cleanup_kube_proxy_ipvs") {
        return Ok(());
    }
    sweep_leftovers();
    let binary = service_lb_tests::daemon::service_lb_binary()?;
    let ns = NetNs::create(&format!("{}-ipvs", run_prefix()))?;
    for (dev, addr) in [
        ("kube-ipvs0", "198.19.0.10/32"),
        ("slbforeign0", "198.19.0.11/32"),
    ] {
        // kube-proxy makes a dummy device; this kernel has no dummy driver, and the
        // clean-up goes by name only, so a veth pair (both ends in the test namespace)
        // stands in for it.
        let peer = format!("{dev}p");
        ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", &peer])?;
        ns.ip(&["addr", "add", addr, "dev", dev])?;
    }
    let with_ipset = has("ipset");
    let ipset = Path::new("ipset");
    if with_ipset {
        for (name, kind, family) in [
            ("KUBE-CLUSTER-IP", "hash:ip,port", "inet"),
            ("KUBE-6-LOOP-BACK", "hash:ip,port,ip", "inet6"),
            ("KUBE-ROUTER-SERVICES", "hash:ip,port", "inet"),
        ] {
            in_ns(&ns, ipset, &["create", name, kind, "family", family], None)?;
        }
    } else {
        eprintln!("no `ipset` installed: the ipset part of this test is skipped");
    }
    let links = |ns: &NetNs| ns.ip_output(&["-o", "link", "show"]);

    let dry = text(&in_ns(
        &ns,
        &binary,
        &["cleanup-kube-proxy", "--dry-run"],
        None,
    )?);
    println!("--- dry run ---\n{dry}");
    assert!(dry.contains("would remove interface kube-ipvs0\n"), "{dry}");
    assert!(
        links(&ns)?.contains("kube-ipvs0"),
        "--dry-run removed kube-ipvs0"
    );
    if with_ipset {
        assert!(
            dry.contains("would remove ipset KUBE-CLUSTER-IP\n"),
            "{dry}"
        );
        assert!(
            dry.contains("would remove ipset KUBE-6-LOOP-BACK\n"),
            "{dry}"
        );
        assert!(dry.contains("kept ipset KUBE-ROUTER-SERVICES"), "{dry}");
    }

    let run = text(&in_ns(&ns, &binary, &["cleanup-kube-proxy"], None)?);
    println!("--- run ---\n{run}");
    assert!(run.contains("removed interface kube-ipvs0\n"), "{run}");
    let after = links(&ns)?;
    assert!(
        !after.contains("kube-ipvs0"),
        "kube-ipvs0 still there: {after}"
    );
    assert!(
        after.contains("slbforeign0"),
        "a foreign interface went: {after}"
    );
    if with_ipset {
        let sets = text(&in_ns(&ns, ipset, &["list", "-n"], None)?);
        assert_eq!(sets.trim(), "KUBE-ROUTER-SERVICES", "ipsets left: {sets}");
    }

    let again = text(&in_ns(&ns, &binary, &["cleanup-kube-proxy"], None)?);
    assert!(again.contains("nothing of kube-proxy's found"), "{again}");
    Ok(())
}
