//! Time for `iptables-restore` (both back ends) and `nft -f` to load kube-proxy's ruleset
//! for N services of 10 endpoints (the generator's layout), each in a fresh namespace of
//! this run.
//!
//! kube-proxy's iptables mode writes the same rules through whichever iptables back end the
//! node uses: nf_tables (`iptables-nft`, the default of current distributions) or the
//! legacy x_tables (`iptables-legacy`). Their costs differ by far, so both are measured,
//! each by its own command, whatever the machine's `iptables` alternative points at.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::config::BACKENDS_PER_SERVICE;
use crate::{
    kube_proxy_rules::{Family, KubeProxyRules, MAX_SERVICES},
    netns::{run_prefix, NetNs},
};

/// The kube-proxy layouts whose loading is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// kube-proxy's iptables mode on the nf_tables back end.
    Iptables,
    /// kube-proxy's iptables mode on the legacy x_tables back end.
    IptablesLegacy,
    Nftables,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::Iptables, Layout::IptablesLegacy, Layout::Nftables];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Iptables => "iptables-nft-restore",
            Layout::IptablesLegacy => "iptables-legacy-restore",
            Layout::Nftables => "nft -f",
        }
    }

    fn command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Layout::Iptables => ("iptables-nft-restore", &["-w", "5"]),
            Layout::IptablesLegacy => ("iptables-legacy-restore", &["-w", "5"]),
            Layout::Nftables => ("nft", &["-f", "-"]),
        }
    }

    /// The generated input for `services` services.
    pub fn input(self, services: u32) -> String {
        let rules = KubeProxyRules::new(Family::Ipv4, services, BACKENDS_PER_SERVICE);
        match self {
            Layout::Iptables | Layout::IptablesLegacy => rules.iptables_restore(),
            Layout::Nftables => rules.nft_script(),
        }
    }
}

/// The result of one load.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadTime {
    Took(Duration),
    /// More services than the generator's ClusterIP range holds.
    TooMany,
    /// Killed at the bound.
    TimedOut(Duration),
}

impl LoadTime {
    pub fn cell(&self) -> String {
        match self {
            LoadTime::Took(d) => format!("{:.3}", d.as_secs_f64()),
            LoadTime::TooMany => format!("not run (generator holds at most {MAX_SERVICES})"),
            LoadTime::TimedOut(d) => format!("not finished in {} s", d.as_secs()),
        }
    }

    pub fn seconds(&self) -> Option<f64> {
        match self {
            LoadTime::Took(d) => Some(d.as_secs_f64()),
            _ => None,
        }
    }
}

/// Loads `layout` for `services` in a new namespace (deleted after), bounded by `bound`.
pub fn time_load(layout: Layout, services: u32, bound: Duration) -> anyhow::Result<LoadTime> {
    if services > MAX_SERVICES {
        return Ok(LoadTime::TooMany);
    }
    let input = layout.input(services);
    let ns = NetNs::create(&format!("{}-kp", run_prefix()))?;
    load_in(&ns, layout, input, bound)
}

/// Feeds `input` to the loader of `layout` inside `ns`, bounded by `bound`.
pub fn load_in(
    ns: &NetNs,
    layout: Layout,
    input: String,
    bound: Duration,
) -> anyhow::Result<LoadTime> {
    let (program, args) = layout.command();
    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} in {}", ns.name()))?;
    let feeder = child.stdin.take().context("stdin of the loader")?;
    let writer = std::thread::spawn(move || {
        let mut feeder = feeder;
        feeder.write_all(input.as_bytes())
    });
    loop {
        if let Some(status) = child.try_wait()? {
            let took = started.elapsed();
            let fed = writer.join();
            if !status.success() {
                let mut err = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = pipe.read_to_string(&mut err);
                }
                bail!("{program} failed ({status}) in {}: {err}", ns.name());
            }
            match fed {
                Ok(Ok(())) => return Ok(LoadTime::Took(took)),
                Ok(Err(e)) => bail!("feeding {program}: {e}"),
                Err(_) => bail!("the thread feeding {program} panicked"),
            }
        }
        if started.elapsed() > bound {
            child.kill().context("killing the loader at its bound")?;
            child.wait()?;
            let _ = writer.join();
            return Ok(LoadTime::TimedOut(bound));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
