//! Nanoseconds per packet of the tc programs, measured by the kernel with
//! BPF_PROG_TEST_RUN, with N services of 10 backends each written in the maps (maps
//! sized for N; nothing is attached, nothing is sent).
//!
//! Paths: new-flow DNAT (one run per distinct flow, every run checked to be translated),
//! established hit and reply reverse NAT (the same packet, run after run), and
//! pass-through (a TCP packet to an address that is no frontend). Every run is timed
//! against the object's empty program on the same packet (`net_cost`): gross, empty, net.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::{
    maps::{HashMap, MapData},
    programs::SchedClassifier,
    Ebpf, EbpfLoader, Pod,
};
use service_lb::dataplane::object;
use service_lb_common::{
    maps,
    proto::IPPROTO_TCP,
    service::{SCOPE_EXTERNAL, SVC_FLAG_CLUSTER_IP},
    Backend4, Hook, RevNat4, Svc4Key, SvcValue,
};

use super::{
    config::BACKENDS_PER_SERVICE,
    net_cost::{self, Cost, Tally},
};
use crate::packet::{PacketSpec, L4};

/// ClusterIPs used: 198.19.0.16 .. 198.19.125.15 (inside 198.19.0.0/17); past that the
/// port changes.
/// Distinct VIPs; past this many services they repeat on the next port.
pub const VIPS: u32 = 32_000;
const VIP_BASE: u32 = u32::from_be_bytes([198, 19, 0, 16]);
const SERVICE_PORT_BASE: u16 = 80;
/// Backend addresses: 198.18.0.2 .. 198.18.255.251 (250 a /24); past that the port changes.
const BACKEND_ADDRS: u32 = 256 * 250;
const BACKEND_PORT_BASE: u16 = 8080;
/// Conntrack room for the new flows of one size, and the clients they come from.
const CT_ENTRIES: u32 = 262_144;
const CLIENT_SPORT_BASE: u16 = 1_024;
const CLIENT_SPORTS: u32 = 60_000;

/// The N services and their backends, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSet {
    pub services: u32,
}

impl ServiceSet {
    pub fn vip(&self, service: u32) -> SocketAddrV4 {
        let addr = Ipv4Addr::from(VIP_BASE + service % VIPS);
        let port = SERVICE_PORT_BASE + u16::try_from(service / VIPS).unwrap_or(u16::MAX - 80);
        SocketAddrV4::new(addr, port)
    }

    /// Backend `slot` (0-based) of `service`: its global id and address.
    pub fn backend(&self, service: u32, slot: u32) -> (u32, SocketAddrV4) {
        let id = service * BACKENDS_PER_SERVICE + slot + 1;
        let g = id - 1;
        let host = g % BACKEND_ADDRS;
        let addr = Ipv4Addr::new(198, 18, (host / 250) as u8, (host % 250 + 2) as u8);
        let port = BACKEND_PORT_BASE + u16::try_from(g / BACKEND_ADDRS).unwrap_or(0);
        (id, SocketAddrV4::new(addr, port))
    }

    /// The service id written in the maps (0 is never used).
    pub fn service_id(&self, service: u32) -> u32 {
        service + 1
    }
}

/// One size's figures: ns per packet of each path, gross, of the empty program and net
/// (see `net_cost`).
#[derive(Debug, Clone, PartialEq)]
pub struct PerPacketRow {
    pub services: u32,
    pub fill: Duration,
    pub new_flow: Cost,
    pub established: Cost,
    pub reply: Cost,
    pub pass: Cost,
    /// Pass-through again, as one repeat loop of `calls` runs (warm caches; valid because
    /// the packet is left as it was).
    pub pass_warm: Cost,
}

impl PerPacketRow {
    /// (name, cost) of each path, in table order.
    pub fn paths(&self) -> [(&'static str, &Cost); 5] {
        [
            ("new-flow DNAT", &self.new_flow),
            ("established hit", &self.established),
            ("reply reverse NAT", &self.reply),
            ("pass-through", &self.pass),
            ("pass-through, repeat loop", &self.pass_warm),
        ]
    }
}

/// The object loaded with maps sized for `set`, programs verified, nothing attached.
struct SizedDataplane {
    ebpf: Ebpf,
}

impl SizedDataplane {
    fn load(set: ServiceSet) -> anyhow::Result<Self> {
        ensure!(!object::is_stub(), object::STUB_HINT);
        let backends = set.services * BACKENDS_PER_SERVICE + 1_024;
        let entries = set.services * (BACKENDS_PER_SERVICE + 1) + 1_024;
        let mut loader = EbpfLoader::new();
        for (name, size) in [
            (maps::SERVICES4, entries),
            (maps::SERVICES6, 1_024),
            (maps::BACKENDS4, backends),
            (maps::BACKENDS6, 1_024),
            (maps::REVNAT4, set.services + 1_024),
            (maps::REVNAT6, 1_024),
            (maps::CT4_TCP, CT_ENTRIES),
            (maps::CT4_ANY, 1_024),
            (maps::CT6_TCP, 1_024),
            (maps::CT6_ANY, 1_024),
        ] {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader
            .load(object::bytes())
            .context("loading the eBPF object")?;
        for hook in [Hook::FromPod, Hook::ToPod] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(hook.name())
                .with_context(|| format!("program {} missing", hook.name()))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("verifying {}", hook.name()))?;
        }
        net_cost::load_empty(&mut ebpf)?;
        Ok(Self { ebpf })
    }

    fn hash_map<K: Pod, V: Pod>(
        &mut self,
        name: &str,
    ) -> anyhow::Result<HashMap<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing"))?;
        Ok(HashMap::try_from(map)?)
    }

    /// Writes every service of `set` the way the daemon does: backends, slots, revnat,
    /// master last.
    fn fill(&mut self, set: ServiceSet) -> anyhow::Result<()> {
        let mut backends = self.hash_map::<u32, Backend4>(maps::BACKENDS4)?;
        for service in 0..set.services {
            for slot in 0..BACKENDS_PER_SERVICE {
                let (id, addr) = set.backend(service, slot);
                let value =
                    Backend4::new(addr.ip().octets(), addr.port().to_be(), IPPROTO_TCP, 0, 0);
                backends.insert(id, value, 0).context("backends map")?;
            }
        }
        let mut revnat = self.hash_map::<u32, RevNat4>(maps::REVNAT4)?;
        for service in 0..set.services {
            let vip = set.vip(service);
            revnat
                .insert(
                    set.service_id(service),
                    RevNat4::new(vip.ip().octets(), vip.port().to_be()),
                    0,
                )
                .context("revnat map")?;
        }
        let mut services = self.hash_map::<Svc4Key, SvcValue>(maps::SERVICES4)?;
        for service in 0..set.services {
            let vip = set.vip(service);
            let key = |slot: u16| {
                Svc4Key::new(
                    vip.ip().octets(),
                    vip.port().to_be(),
                    IPPROTO_TCP,
                    SCOPE_EXTERNAL,
                    slot,
                )
            };
            let id = set.service_id(service);
            for slot in 0..BACKENDS_PER_SERVICE {
                let (backend_id, _) = set.backend(service, slot);
                services
                    .insert(key(slot as u16 + 1), SvcValue::slot(backend_id, id), 0)
                    .context("services map")?;
            }
            services
                .insert(
                    key(0),
                    SvcValue::master(BACKENDS_PER_SERVICE, id, SVC_FLAG_CLUSTER_IP, 0),
                    0,
                )
                .context("services map")?;
        }
        Ok(())
    }

    fn program(&self, name: &str) -> anyhow::Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?)
    }

    /// `net_cost::measure` of `hook` against `tc_empty`.
    fn measure<I, C>(&self, hook: Hook, packets: I, check: C) -> anyhow::Result<Tally>
    where
        I: IntoIterator<Item = Vec<u8>>,
        C: FnMut(usize, &[u8], &[u8]) -> anyhow::Result<()>,
    {
        net_cost::measure(
            self.program(hook.name())?,
            self.program(net_cost::EMPTY_PROGRAM)?,
            packets,
            check,
        )
        .with_context(|| format!("measuring {}", hook.name()))
    }
}

fn client(flow: u32) -> SocketAddr {
    let host = u8::try_from(flow / CLIENT_SPORTS % 250 + 2).unwrap_or(2);
    let port = CLIENT_SPORT_BASE + u16::try_from(flow % CLIENT_SPORTS).unwrap_or(0);
    SocketAddr::new(Ipv4Addr::new(198, 18, 255, host).into(), port)
}

/// Rounds of the per-packet measurement: each takes every N in turn.
const ROUNDS: u32 = 5;

/// One N loaded and filled, with the packets of its measured service.
struct Prepared {
    services: u32,
    dp: SizedDataplane,
    fill: Duration,
    vip: SocketAddr,
    backends: Vec<SocketAddr>,
    /// New flows: summed over all rounds (each flow is measured once).
    new_flow: Tally,
    /// The other paths: one cost per round.
    established: Vec<Cost>,
    reply: Vec<Cost>,
    pass: Vec<Cost>,
    pass_warm: Vec<Cost>,
}

/// Measures the four paths with each of `services` services in the maps. Every N is
/// loaded and filled first; then the measurement goes in rounds that take each N in turn
/// (a share of the new flows, then `calls` runs of each of the three other paths), so a
/// slower spell of the machine falls on every N alike. Every run is one
/// BPF_PROG_TEST_RUN call paired with one of the empty program (`net_cost`). New flows:
/// the mean over all of them; the other paths: the median of the rounds' means.
pub fn measure_all(
    services: &[u32],
    calls: u32,
    new_flows: u32,
) -> anyhow::Result<Vec<PerPacketRow>> {
    ensure!(new_flows > 0 && calls > 0, "empty measurement");
    ensure!(
        new_flows < CT_ENTRIES / 2,
        "{new_flows} new flows overflow conntrack"
    );
    let _stats = net_cost::RunTimeStats::enable()
        .map_err(|e| eprintln!("slb-bench: per-packet: no BPF run-time statistics: {e:#}"))
        .ok();
    let mut prepared = Vec::new();
    for &n in services {
        eprintln!("slb-bench: per-packet: loading and filling {n} services");
        prepared.push(prepare(n)?);
    }
    let share = new_flows.div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        eprintln!("slb-bench: per-packet: round {} of {ROUNDS}", round + 1);
        for p in &mut prepared {
            let first = round * share;
            let flows = first..(first + share).min(new_flows);
            p.new_flows_round(flows)
                .with_context(|| format!("new flows with {} services", p.services))?;
            p.repeated_round(calls)
                .with_context(|| format!("repeated paths with {} services", p.services))?;
        }
    }
    Ok(prepared.into_iter().map(Prepared::row).collect())
}

fn prepare(services: u32) -> anyhow::Result<Prepared> {
    ensure!(services > 0, "no services");
    let set = ServiceSet { services };
    let mut dp = SizedDataplane::load(set)?;
    let started = Instant::now();
    dp.fill(set)
        .with_context(|| format!("writing {services} services"))?;
    let fill = started.elapsed();
    let measured = services / 2;
    Ok(Prepared {
        services,
        dp,
        fill,
        vip: SocketAddr::V4(set.vip(measured)),
        backends: (0..BACKENDS_PER_SERVICE)
            .map(|slot| SocketAddr::V4(set.backend(measured, slot).1))
            .collect(),
        new_flow: Tally::default(),
        established: Vec::new(),
        reply: Vec::new(),
        pass: Vec::new(),
        pass_warm: Vec::new(),
    })
}

impl Prepared {
    /// New flows: one run each; every output must be the SYN sent to a backend of the
    /// service (source and everything else as sent).
    fn new_flows_round(&mut self, flows: std::ops::Range<u32>) -> anyhow::Result<()> {
        let first = flows.start;
        let syns = flows
            .map(|flow| PacketSpec::new(client(flow), self.vip, L4::SYN).build())
            .collect::<Result<Vec<_>, _>>()?;
        let expected: Vec<Vec<Vec<u8>>> = (first..first + syns.len() as u32)
            .map(|flow| {
                self.backends
                    .iter()
                    .filter_map(|b| PacketSpec::new(client(flow), *b, L4::SYN).build().ok())
                    .collect()
            })
            .collect();
        let tally = self.dp.measure(Hook::FromPod, syns, |i, _, out| {
            ensure!(
                expected.get(i).is_some_and(|e| e.iter().any(|p| p == out)),
                "new flow {} was not translated to a backend of its service",
                first + i as u32
            );
            Ok(())
        })?;
        self.new_flow.add(&tally);
        Ok(())
    }

    /// The established hit, the reply's reverse NAT and a pass-through, `calls` runs
    /// each, every output checked.
    fn repeated_round(&mut self, calls: u32) -> anyhow::Result<()> {
        let calls = calls as usize;
        // Established: flow 0 exists (the first round created it); its backend is read
        // from the first translated packet, and every run must give that packet.
        let ack_spec = PacketSpec::new(client(0), self.vip, L4::ACK);
        let ack = ack_spec.build()?;
        let mut backend = None;
        let candidates: Vec<(SocketAddr, Vec<u8>)> = self
            .backends
            .iter()
            .filter_map(|b| Some((*b, ack_spec.clone().with_dst(*b).build().ok()?)))
            .collect();
        let tally = self.dp.measure(
            Hook::FromPod,
            std::iter::repeat_n(ack, calls),
            |_, _, out| {
                let hit = candidates.iter().find(|(_, p)| p == out).map(|(b, _)| *b);
                ensure!(
                    hit.is_some() && (backend.is_none() || backend == hit),
                    "established flow not translated to its backend"
                );
                backend = hit;
                Ok(())
            },
        )?;
        self.established.push(tally.cost());
        let backend = backend.context("no established run")?;

        // Reply: the backend answers; to_pod must put the VIP back as the source.
        let reply = PacketSpec::new(backend, client(0), L4::ACK).build()?;
        let restored = PacketSpec::new(self.vip, client(0), L4::ACK).build()?;
        let tally = self.dp.measure(
            Hook::ToPod,
            std::iter::repeat_n(reply, calls),
            |_, _, out| {
                ensure!(
                    out == restored,
                    "the reply was not reverse-NATed to the VIP"
                );
                Ok(())
            },
        )?;
        self.reply.push(tally.cost());

        // Pass-through: an address inside the ClusterIP range that is no frontend.
        let other: SocketAddr = "198.19.127.250:80".parse()?;
        let pass = PacketSpec::new(client(0), other, L4::ACK).build()?;
        let warm = net_cost::measure_repeat(
            self.dp.program(Hook::FromPod.name())?,
            self.dp.program(net_cost::EMPTY_PROGRAM)?,
            &pass,
            u32::try_from(calls)?,
        )?;
        self.pass_warm.push(warm);
        let tally = self.dp.measure(
            Hook::FromPod,
            std::iter::repeat_n(pass, calls),
            |_, input, out| {
                ensure!(out == input, "a packet to a non-frontend was modified");
                Ok(())
            },
        )?;
        self.pass.push(tally.cost());
        Ok(())
    }

    fn row(self) -> PerPacketRow {
        PerPacketRow {
            services: self.services,
            fill: self.fill,
            new_flow: self.new_flow.cost(),
            established: Cost::median(&self.established),
            reply: Cost::median(&self.reply),
            pass: Cost::median(&self.pass),
            pass_warm: Cost::median(&self.pass_warm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_the_test_ranges() {
        let set = ServiceSet { services: 100_000 };
        let mut vips = std::collections::HashSet::new();
        let mut backends = std::collections::HashSet::new();
        for service in (0..100_000).step_by(97).chain([99_999]) {
            let vip = set.vip(service);
            assert_eq!(&vip.ip().octets()[..2], &[198, 19]);
            assert!(vip.ip().octets()[2] < 128, "{vip} outside 198.19.0.0/17");
            assert!(vips.insert(vip), "{vip} twice");
            for slot in 0..BACKENDS_PER_SERVICE {
                let (id, addr) = set.backend(service, slot);
                assert_eq!(&addr.ip().octets()[..2], &[198, 18]);
                assert!(backends.insert((id, addr)));
            }
        }
        assert_eq!(set.backend(1, 0).0, 11);
        assert_ne!(set.backend(0, 0).1, set.backend(6_500, 0).1);
    }
}
