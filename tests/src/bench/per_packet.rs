//! Nanoseconds per packet of the tc programs, measured by the kernel with
//! BPF_PROG_TEST_RUN, with N services of 10 backends each written in the maps (maps
//! sized for N; nothing is attached, nothing is sent).
//!
//! Paths: new-flow DNAT (one run per distinct flow, every run checked to be translated),
//! established hit and reply reverse NAT (the same packet `repeat` times), and
//! pass-through (a TCP packet to an address that is no frontend).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::{
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    Ebpf, EbpfLoader, Pod,
};
use service_lb::dataplane::object;
use service_lb_common::{
    maps,
    proto::IPPROTO_TCP,
    service::{SCOPE_EXTERNAL, SVC_FLAG_CLUSTER_IP},
    Backend4, Hook, RevNat4, Svc4Key, SvcValue,
};

use super::config::BACKENDS_PER_SERVICE;
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

/// One size's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PerPacketRow {
    pub services: u32,
    pub fill: Duration,
    pub new_flow_ns: f64,
    pub established_ns: f64,
    pub reply_ns: f64,
    pub pass_ns: f64,
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

    /// Runs `hook` on `packet` `repeat` times; the kernel's mean time per run and the
    /// packet as the last run left it.
    fn run(&self, hook: Hook, packet: &[u8], repeat: u32) -> anyhow::Result<(Duration, Vec<u8>)> {
        let program: &SchedClassifier = self
            .ebpf
            .program(hook.name())
            .with_context(|| format!("program {}", hook.name()))?
            .try_into()?;
        let mut out = vec![0u8; packet.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {} x{repeat}", hook.name()))?;
        out.truncate(usize::try_from(result.data_size_out)?);
        Ok((result.duration, out))
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
    /// Kernel time of the new flows so far, and how many.
    new_flow_time: Duration,
    new_flows: u32,
    established: Vec<f64>,
    reply: Vec<f64>,
    pass: Vec<f64>,
}

/// Measures the four paths with each of `services` services in the maps. Every N is
/// loaded and filled first; then the measurement goes in rounds that take each N in turn
/// (a share of the new flows, then the three repeated paths), so a slower spell of the
/// machine falls on every N alike. Repeated paths: the median of the rounds.
pub fn measure_all(
    services: &[u32],
    repeat: u32,
    new_flows: u32,
) -> anyhow::Result<Vec<PerPacketRow>> {
    ensure!(new_flows > 0 && repeat > 0, "empty measurement");
    ensure!(
        new_flows < CT_ENTRIES / 2,
        "{new_flows} new flows overflow conntrack"
    );
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
            p.repeated_round(repeat)
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
        new_flow_time: Duration::ZERO,
        new_flows: 0,
        established: Vec::new(),
        reply: Vec::new(),
        pass: Vec::new(),
    })
}

impl Prepared {
    /// New flows: one run each; every output must be the SYN sent to a backend.
    fn new_flows_round(&mut self, flows: std::ops::Range<u32>) -> anyhow::Result<()> {
        for flow in flows {
            let syn = PacketSpec::new(client(flow), self.vip, L4::SYN).build()?;
            let (time, out) = self.dp.run(Hook::FromPod, &syn, 1)?;
            ensure!(
                out != syn && out.len() == syn.len(),
                "new flow {flow} was not translated"
            );
            self.new_flow_time += time;
            self.new_flows += 1;
        }
        Ok(())
    }

    /// The established hit, the reply's reverse NAT and a pass-through, `repeat` runs each,
    /// every output checked.
    fn repeated_round(&mut self, repeat: u32) -> anyhow::Result<()> {
        // Established: flow 0 exists (the first round created it); its backend is read
        // from the translated packet.
        let ack_spec = PacketSpec::new(client(0), self.vip, L4::ACK);
        let ack = ack_spec.build()?;
        let (time, translated) = self.dp.run(Hook::FromPod, &ack, repeat)?;
        self.established.push(time.as_nanos() as f64);
        let backend = self
            .backends
            .iter()
            .copied()
            .find(|b| ack_spec.clone().with_dst(*b).build().ok().as_ref() == Some(&translated))
            .context("established flow not translated to a backend of its service")?;

        // Reply: the backend answers; to_pod must put the VIP back as the source.
        let reply = PacketSpec::new(backend, client(0), L4::ACK).build()?;
        let (time, restored) = self.dp.run(Hook::ToPod, &reply, repeat)?;
        self.reply.push(time.as_nanos() as f64);
        ensure!(
            Some(&restored)
                == PacketSpec::new(self.vip, client(0), L4::ACK)
                    .build()
                    .ok()
                    .as_ref(),
            "the reply was not reverse-NATed to the VIP"
        );

        // Pass-through: an address inside the ClusterIP range that is no frontend.
        let other: SocketAddr = "198.19.127.250:80".parse()?;
        let pass = PacketSpec::new(client(0), other, L4::ACK).build()?;
        let (time, untouched) = self.dp.run(Hook::FromPod, &pass, repeat)?;
        ensure!(untouched == pass, "a packet to a non-frontend was modified");
        self.pass.push(time.as_nanos() as f64);
        Ok(())
    }

    fn row(self) -> PerPacketRow {
        PerPacketRow {
            services: self.services,
            fill: self.fill,
            new_flow_ns: self.new_flow_time.as_nanos() as f64 / f64::from(self.new_flows.max(1)),
            established_ns: median(self.established),
            reply_ns: median(self.reply),
            pass_ns: median(self.pass),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
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
