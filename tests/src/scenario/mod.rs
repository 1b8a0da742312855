//! The ClusterIP end-to-end scenario of `tests/e2e_clusterip.rs` (the data plane driven
//! directly), and in `daemon_demo` the demo with the real daemon (`slb-demo`).
//!
//! Two nodes; backends b1 (node 1), b2 and b3 (node 2); a client pod on node 1.
//! service-lb is loaded and attached on both nodes, each with its own pinned maps,
//! programmed with the same ClusterIPs: 198.19.0.10 and fd00:19::10, port 80/TCP
//! (targetPort 8080) and 53/UDP (targetPort 5353). Then, per family: a batch of TCP
//! connections and UDP queries to the ClusterIP; held connections to each backend;
//! b3 removed; a second batch; the held connections pinged; traffic straight to a pod.

pub mod daemon_demo;
pub mod dataplane;
pub mod demo_policy;
pub mod http;
pub mod outcome;
pub mod traffic;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use service_lb::dataplane::L4Proto;

use crate::netns::sweep_leftovers;
use crate::servers::{HeldConnection, Servers};
use crate::topology::{Cluster, ClusterSpec, Pod};
use dataplane::{ClusterIp, Endpoint};
pub use outcome::{
    DirectCheck, FamilyOutcome, HeldCheck, IpFamily, NodeCounters, Outcome, PortReuseCheck, Spread,
    Step,
};
use traffic::{ask_many, ask_once, ask_once_from, hold_one_per_backend, ping_held, Transport};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, 0x10);
pub const TCP_PORT: u16 = 80;
pub const TCP_TARGET_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 53;
pub const UDP_TARGET_PORT: u16 = 5353;
pub const CLIENT: &str = "client";
pub const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];
/// The backend removed half-way.
pub const REMOVED: &str = "b3";
/// The backend targeted by the direct (no Service) checks: on the other node.
pub const DIRECT_TARGET: &str = "b2";
/// Client ports of the port-reuse checks (below the ephemeral range, so no other socket of
/// the client holds them): one per family and transport.
const REUSED_PORTS: [u16; 4] = [23_000, 23_001, 23_002, 23_003];

/// How much traffic the scenario sends.
#[derive(Clone, Copy, Debug)]
pub struct ScenarioConfig {
    /// Connections (and UDP queries) per family before the removal.
    pub calls: u32,
    /// Connections (and UDP queries) per family after the removal.
    pub calls_after_removal: u32,
    /// Pings per held connection after the removal.
    pub pings: u32,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            calls: 600,
            calls_after_removal: 300,
            pings: 5,
        }
    }
}

/// Runs the scenario with the default traffic. Everything it creates is removed before
/// it returns, on success and on error.
pub fn clusterip_scenario(report: &mut dyn FnMut(Step)) -> Result<Outcome> {
    clusterip_scenario_with(ScenarioConfig::default(), report)
}

pub fn clusterip_scenario_with(
    config: ScenarioConfig,
    report: &mut dyn FnMut(Step),
) -> Result<Outcome> {
    for leftover in sweep_leftovers() {
        report(Step::Setup(format!(
            "removed a leftover of an earlier run: {leftover}"
        )));
    }
    let spec = ClusterSpec::new(&[&[CLIENT, "b1"], &["b2", "b3"]]);
    let cluster = Cluster::new(&spec).context("building the namespace topology")?;
    let namespaces = cluster.namespace_names();
    let bpffs_dirs = cluster
        .nodes
        .iter()
        .map(|n| n.bpffs.path().to_path_buf())
        .collect();
    describe_topology(&cluster, report);

    let outcome = Run {
        cluster: &cluster,
        config,
        report,
    }
    .run();
    drop(cluster);
    let mut outcome = outcome?;
    outcome.namespaces = namespaces;
    outcome.bpffs_dirs = bpffs_dirs;
    report(Step::Setup(
        "removed every namespace and bpffs folder of the run".into(),
    ));
    Ok(outcome)
}

fn describe_topology(cluster: &Cluster, report: &mut dyn FnMut(Step)) {
    for node in &cluster.nodes {
        let pods: Vec<String> = cluster
            .pods
            .iter()
            .filter(|p| p.node == node.index)
            .map(|p| format!("{} ({}, {})", p.name, p.v4, p.v6))
            .collect();
        report(Step::Setup(format!(
            "node {} = namespace {}, underlay {} / {}, pods: {}",
            node.name,
            node.ns.name(),
            node.v4,
            node.v6,
            pods.join(", ")
        )));
    }
}

struct Run<'a> {
    cluster: &'a Cluster,
    config: ScenarioConfig,
    report: &'a mut dyn FnMut(Step),
}

impl Run<'_> {
    /// Reports `service-lb inspect services` of the first node, indented under the step.
    fn show_inspect(&mut self, when: &str) -> Result<()> {
        let node = self.cluster.node(1)?;
        let table = dataplane::inspect_services(node)?;
        let indented: Vec<String> = table.lines().map(|l| format!("             {l}")).collect();
        (self.report)(Step::Seen(format!(
            "`service-lb inspect services --bpffs {}` on node {}{when} (read back from its pinned maps):\n{}",
            node.bpffs.path().display(),
            node.name,
            indented.join("\n")
        )));
        Ok(())
    }

    fn run(mut self) -> Result<Outcome> {
        let backends: Vec<&Pod> = BACKENDS
            .iter()
            .map(|b| self.cluster.pod(b))
            .collect::<Result<_>>()?;
        let _servers = self.start_servers(&backends)?;
        self.check_topology(&backends)?;

        let mut attachments = BTreeMap::new();
        for node in &self.cluster.nodes {
            let attached = dataplane::install(node)?;
            let names: Vec<String> = attached
                .iter()
                .map(|a| format!("{}@{}", a.hook.name(), a.ifname))
                .collect();
            (self.report)(Step::Setup(format!(
                "service-lb loaded on node {} (maps pinned in {}), {} programs attached: {}",
                node.name,
                node.bpffs.path().display(),
                attached.len(),
                names.join(" ")
            )));
            attachments.insert(node.name.clone(), attached.len());
        }

        let all = self.services(&backends, None);
        self.program_all(&all)?;
        for s in &all {
            let ends: Vec<String> = s.endpoints.iter().map(|e| e.addr.to_string()).collect();
            (self.report)(Step::Setup(format!(
                "ClusterIP {}/{} -> {}",
                s.vip,
                s.proto,
                ends.join(", ")
            )));
        }

        self.show_inspect("")?;

        let mut families = Vec::new();
        let mut held = BTreeMap::new();
        for family in IpFamily::ALL {
            let first = self.first_batches(family)?;
            held.insert(family, self.hold_connections(family)?);
            families.push(first);
        }

        let remaining = self.services(&backends, Some(REMOVED));
        let flushed = self.program_all(&remaining)?;
        let flushed: Vec<String> = flushed
            .iter()
            .map(|(node, n)| format!("{n} on {node}"))
            .collect();
        (self.report)(Step::Change(format!(
            "removed {REMOVED} from every ClusterIP on both nodes (upsert with the other backends), \
             then flushed its UDP conntrack entries as the daemon and kube-proxy do; TCP ones stay ({})",
            flushed.join(", ")
        )));

        self.show_inspect(" after the removal")?;

        for outcome in &mut families {
            let connections = held.get_mut(&outcome.family).context("held connections")?;
            self.after_removal(outcome, connections)?;
            self.direct_checks(outcome)?;
            self.port_reuse_checks(outcome)?;
        }
        drop(held);

        let counters = self.read_counters()?;
        Ok(Outcome {
            backends: BACKENDS.iter().map(|b| (*b).to_owned()).collect(),
            removed: REMOVED.to_owned(),
            families,
            counters,
            namespaces: Vec::new(),
            bpffs_dirs: Vec::new(),
            attachments,
        })
    }

    fn start_servers(&mut self, backends: &[&Pod]) -> Result<Vec<Servers>> {
        let servers = backends
            .iter()
            .map(|pod| {
                let tcp = [
                    sa(pod.v4.into(), TCP_TARGET_PORT),
                    sa(pod.v6.into(), TCP_TARGET_PORT),
                ];
                let udp = [
                    sa(pod.v4.into(), UDP_TARGET_PORT),
                    sa(pod.v6.into(), UDP_TARGET_PORT),
                ];
                Servers::start(&pod.ns, &pod.name, &tcp, &udp)
                    .with_context(|| format!("starting the servers of {}", pod.name))
            })
            .collect::<Result<Vec<_>>>()?;
        (self.report)(Step::Setup(format!(
            "each backend answers with its name on TCP {TCP_TARGET_PORT} and UDP {UDP_TARGET_PORT}, IPv4 and IPv6"
        )));
        Ok(servers)
    }

    /// Before any program is loaded: the client reaches every backend directly.
    fn check_topology(&mut self, backends: &[&Pod]) -> Result<()> {
        let client = self.cluster.pod(CLIENT)?;
        for pod in backends {
            for family in IpFamily::ALL {
                let target = sa(pod.addr(family.is_v6()), TCP_TARGET_PORT);
                ask_once(&client.ns, Transport::Tcp, target)
                    .with_context(|| format!("topology check (no BPF yet): client -> {target}"))?;
            }
        }
        (self.report)(Step::Seen(
            "before service-lb: the client reaches every backend pod directly".into(),
        ));
        Ok(())
    }

    fn services(&self, backends: &[&Pod], without: Option<&str>) -> Vec<ClusterIp> {
        let kept: Vec<&&Pod> = backends
            .iter()
            .filter(|p| Some(p.name.as_str()) != without)
            .collect();
        let mut services = Vec::new();
        for family in IpFamily::ALL {
            for (proto, port, target) in [
                (L4Proto::Tcp, TCP_PORT, TCP_TARGET_PORT),
                (L4Proto::Udp, UDP_PORT, UDP_TARGET_PORT),
            ] {
                let endpoints = kept
                    .iter()
                    .map(|p| Endpoint {
                        addr: sa(p.addr(family.is_v6()), target),
                        node: p.node,
                    })
                    .collect();
                services.push(ClusterIp {
                    vip: sa(vip(family), port),
                    proto,
                    endpoints,
                });
            }
        }
        services
    }

    /// Programs every node; returns the UDP conntrack entries flushed per node.
    fn program_all(&mut self, services: &[ClusterIp]) -> Result<Vec<(String, usize)>> {
        self.cluster
            .nodes
            .iter()
            .map(|node| Ok((node.name.clone(), dataplane::program(node, services)?)))
            .collect()
    }

    fn first_batches(&mut self, family: IpFamily) -> Result<FamilyOutcome> {
        let client = self.cluster.pod(CLIENT)?;
        let client_ip = client.addr(family.is_v6());
        let (tcp_vip, udp_vip) = (sa(vip(family), TCP_PORT), sa(vip(family), UDP_PORT));
        let n = self.config.calls;
        let tcp = ask_many(&client.ns, client_ip, Transport::Tcp, tcp_vip, n)?;
        (self.report)(Step::Seen(format!(
            "{family} {n} TCP connections to {tcp_vip}: {}",
            summary(&tcp)
        )));
        let udp = ask_many(&client.ns, client_ip, Transport::Udp, udp_vip, n)?;
        (self.report)(Step::Seen(format!(
            "{family} {n} UDP queries to {udp_vip}: {}",
            summary(&udp)
        )));
        Ok(FamilyOutcome {
            family,
            client: client_ip,
            tcp_vip,
            udp_vip,
            tcp,
            udp,
            tcp_after_removal: Spread::default(),
            udp_after_removal: Spread::default(),
            held_kept: Vec::new(),
            held_removed: None,
            direct: Vec::new(),
            port_reuse: Vec::new(),
        })
    }

    fn hold_connections(&mut self, family: IpFamily) -> Result<BTreeMap<String, HeldConnection>> {
        let client = self.cluster.pod(CLIENT)?;
        let names: Vec<String> = BACKENDS.iter().map(|b| (*b).to_owned()).collect();
        let held = hold_one_per_backend(&client.ns, sa(vip(family), TCP_PORT), &names, 100)?;
        (self.report)(Step::Setup(format!(
            "{family}: holding one open TCP connection through the ClusterIP to each of {}",
            names.join(", ")
        )));
        Ok(held)
    }

    fn after_removal(
        &mut self,
        outcome: &mut FamilyOutcome,
        held: &mut BTreeMap<String, HeldConnection>,
    ) -> Result<()> {
        let client = self.cluster.pod(CLIENT)?;
        let family = outcome.family;
        let n = self.config.calls_after_removal;
        outcome.tcp_after_removal = ask_many(
            &client.ns,
            outcome.client,
            Transport::Tcp,
            outcome.tcp_vip,
            n,
        )?;
        (self.report)(Step::Seen(format!(
            "{family} {n} new TCP connections after the removal: {}",
            summary(&outcome.tcp_after_removal)
        )));
        outcome.udp_after_removal = ask_many(
            &client.ns,
            outcome.client,
            Transport::Udp,
            outcome.udp_vip,
            n,
        )?;
        (self.report)(Step::Seen(format!(
            "{family} {n} new UDP queries after the removal: {}",
            summary(&outcome.udp_after_removal)
        )));
        for (name, connection) in held.iter_mut() {
            let check = ping_held(connection, self.config.pings);
            let text = match &check.first_error {
                None => format!("answered {}/{} pings", check.answered, check.pings),
                Some(e) => format!(
                    "answered {}/{} pings, then: {e}",
                    check.answered, check.pings
                ),
            };
            if name == REMOVED {
                (self.report)(Step::Seen(format!(
                    "{family} held connection to the removed {name}: {text}"
                )));
                outcome.held_removed = Some(check);
            } else {
                (self.report)(Step::Seen(format!(
                    "{family} held connection to {name}: {text}"
                )));
                outcome.held_kept.push(check);
            }
        }
        Ok(())
    }

    fn direct_checks(&mut self, outcome: &mut FamilyOutcome) -> Result<()> {
        let client = self.cluster.pod(CLIENT)?;
        let target = self.cluster.pod(DIRECT_TARGET)?;
        let ip = target.addr(outcome.family.is_v6());
        for (transport, port) in [
            (Transport::Tcp, TCP_TARGET_PORT),
            (Transport::Udp, UDP_TARGET_PORT),
        ] {
            let addr = sa(ip, port);
            let answer = ask_once(&client.ns, transport, addr).map_err(|e| format!("{e:#}"));
            let text = match &answer {
                Ok(a) => format!(
                    "{} answered from {} and saw the client as {}",
                    a.name, a.server_seen_by_client, a.client_seen_by_server
                ),
                Err(e) => format!("failed: {e}"),
            };
            (self.report)(Step::Seen(format!(
                "{} {} straight to pod {} at {addr} (no Service): {text}",
                outcome.family,
                transport.name(),
                target.name
            )));
            outcome.direct.push(DirectCheck {
                proto: transport.name(),
                target: addr,
                answer,
            });
        }
        Ok(())
    }

    /// From one fixed client port: a call through the ClusterIP, then one straight to the
    /// backend that answered. The second flow's reply tuple is the first one's (still
    /// tracked), so service-lb must give it another source port for its replies to reach
    /// the client un-translated.
    fn port_reuse_checks(&mut self, outcome: &mut FamilyOutcome) -> Result<()> {
        let client = self.cluster.pod(CLIENT)?;
        let family = outcome.family;
        let transports = [
            (Transport::Tcp, outcome.tcp_vip, TCP_TARGET_PORT),
            (Transport::Udp, outcome.udp_vip, UDP_TARGET_PORT),
        ];
        for (i, (transport, vip, target_port)) in transports.into_iter().enumerate() {
            let port = REUSED_PORTS[usize::from(family.is_v6()) * 2 + i];
            let via_service = ask_once_from(&client.ns, transport, vip, port);
            let target = match &via_service {
                Ok(answer) => Some(sa(
                    self.cluster.pod(&answer.name)?.addr(family.is_v6()),
                    target_port,
                )),
                Err(_) => None,
            };
            let direct = match target {
                Some(addr) => ask_once_from(&client.ns, transport, addr, port),
                None => Err(anyhow::anyhow!("no call through {vip} answered")),
            };
            let show = |answer: &Result<crate::servers::Answer>| match answer {
                Ok(a) => format!(
                    "{} answered from {} and saw the client as {}",
                    a.name, a.server_seen_by_client, a.client_seen_by_server
                ),
                Err(e) => format!("failed: {e:#}"),
            };
            (self.report)(Step::Seen(format!(
                "{family} {} from client port {port}: through {vip}, {}; then from the same port straight to {}, {}",
                transport.name(),
                show(&via_service),
                target.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                show(&direct),
            )));
            outcome.port_reuse.push(PortReuseCheck {
                proto: transport.name(),
                port,
                via_service: via_service.map_err(|e| format!("{e:#}")),
                target,
                direct: direct.map_err(|e| format!("{e:#}")),
            });
        }
        Ok(())
    }

    fn read_counters(&mut self) -> Result<Vec<NodeCounters>> {
        self.cluster
            .nodes
            .iter()
            .map(|node| {
                Ok(NodeCounters {
                    node: node.name.clone(),
                    totals: dataplane::counters(node)?,
                })
            })
            .collect()
    }
}

fn vip(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => VIP4.into(),
        IpFamily::V6 => VIP6.into(),
    }
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// "b1 201, b2 199, b3 200 (0 failed)".
pub fn summary(spread: &Spread) -> String {
    let per: Vec<String> = spread
        .per_backend
        .iter()
        .map(|(b, n)| format!("{b} {n}"))
        .collect();
    let mut text = format!("{} ({} failed)", per.join(", "), spread.failures);
    if let Some(e) = &spread.first_error {
        text.push_str(&format!("; first error: {e}"));
    }
    text
}
