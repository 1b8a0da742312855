//! BPF_PROG_TEST_RUN fixtures for Maglev frontends (`SVC_FLAG_MAGLEV`): the real object,
//! its maps pinned in a bpffs folder of the test and programmed by the daemon's
//! `ServiceWriter` (as the daemon programs them), new flows sent at the from-net hook
//! (an external client to a NodePort-style frontend on the node's address).
//!
//! - a flow's backend is the one the frontend's table names at `flow_hash % M`, every
//!   time (conntrack cleared between the sends), while a frontend without the flag
//!   spreads the same tuple at random (the control);
//! - two data planes whose writers handed out different backend ids send the same client
//!   tuples to the same backend addresses (the same backend on every node);
//! - removing one of N backends moves about 1/N of 1000 client tuples (printed);
//! - sessionAffinity still wins over the table.
//!
//! Every output packet is compared whole with one built here (DNAT to the backend).
//! Needs root (BPF, bpffs). Addresses: external clients 198.19.200.0/24 and fd00:c8::/64,
//! the node 198.19.255.1 / fd00:ff::1, pods 198.18.i.0/24 and fd00:18:0:i::/64.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _};
use rstest::rstest;
use service_lb::dataplane::{
    pin, BackendSpec, BpfMaps, FrontendKey, FrontendSpec, L4Proto, MapStore, ServiceWriter,
};
use service_lb_common::{
    affinity::AffinityValue,
    maglev::{flow_hash4, flow_hash6, MaglevKey},
    proto::{IPPROTO_TCP, VERDICT_PASS},
    service::{BACKEND_STATE_ACTIVE, SCOPE_EXTERNAL, SVC_FLAG_MAGLEV},
    Hook,
};
use service_lb_tests::{
    netns::{run_prefix, sweep_leftovers, BPFFS_ROOT},
    packet::{clock::boot_ns, Dataplane, PacketSpec, L4},
    privileges::require_root,
};

const NODE_PORT: u16 = 30080;

#[derive(Clone, Copy, Debug)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    /// The node's address: the frontend (a NodePort on it).
    fn node(self) -> IpAddr {
        match self {
            Fam::V4 => Ipv4Addr::new(198, 19, 255, 1).into(),
            Fam::V6 => Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 1).into(),
        }
    }

    /// External client `i` (0..=65535 clients, 4 source ports each in the tests).
    fn client(self, i: u32) -> SocketAddr {
        let host = 1 + i % 250;
        let sport = 20_000 + (i / 250) as u16;
        let ip: IpAddr = match self {
            Fam::V4 => Ipv4Addr::new(198, 19, 200, host as u8).into(),
            Fam::V6 => Ipv6Addr::new(0xfd00, 0xc8, 0, 0, 0, 0, 0, host as u16).into(),
        };
        SocketAddr::new(ip, sport)
    }

    /// Backend pod `i` (on two "nodes" of pod CIDRs), port 8080.
    fn backend(self, i: u32) -> SocketAddr {
        let node = 1 + (i % 2) as u8;
        let host = 10 + i as u8;
        let ip: IpAddr = match self {
            Fam::V4 => Ipv4Addr::new(198, 18, node, host).into(),
            Fam::V6 => Ipv6Addr::new(0xfd00, 0x18, 0, node.into(), 0, 0, 0, host.into()).into(),
        };
        SocketAddr::new(ip, 8080)
    }

    fn frontend(self) -> FrontendKey {
        FrontendKey {
            addr: self.node(),
            port: NODE_PORT,
            proto: L4Proto::Tcp,
            scope: SCOPE_EXTERNAL,
        }
    }

    fn flow_hash(self, client: SocketAddr) -> u32 {
        let (sport_be, dport_be) = (client.port().to_be(), NODE_PORT.to_be());
        match client.ip() {
            IpAddr::V4(a) => flow_hash4(a.octets(), sport_be, dport_be, IPPROTO_TCP),
            IpAddr::V6(a) => flow_hash6(a.octets(), sport_be, dport_be, IPPROTO_TCP),
        }
    }
}

fn spec(fam: Fam, backends: &[SocketAddr], flags: u16, affinity_timeout_s: u32) -> FrontendSpec {
    FrontendSpec {
        key: fam.frontend(),
        backends: backends
            .iter()
            .map(|addr| BackendSpec {
                addr: *addr,
                state: BACKEND_STATE_ACTIVE,
                local: false,
            })
            .collect(),
        flags,
        affinity_timeout_s,
        source_ranges: vec![],
    }
}

/// A bpffs folder of this test run, removed on drop (its pins with it).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

/// One node's data plane: the object (run by BPF_PROG_TEST_RUN), its maps pinned in the
/// node's own bpffs folder, and a writer on those pins.
struct Node {
    dp: Dataplane,
    writer: ServiceWriter<BpfMaps>,
    _dir: PinDir,
}

impl Node {
    fn new(name: &str) -> anyhow::Result<Self> {
        let path = Path::new(BPFFS_ROOT).join(format!("{}-maglev-{name}", run_prefix()));
        pin::ensure_bpffs(&path).context("a bpf filesystem at /sys/fs/bpf")?;
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = PinDir(path);
        let dp = Dataplane::load()?;
        dp.pin_maps(&dir.0)?;
        let writer = ServiceWriter::open(BpfMaps::open_pinned(&dir.0)?)?;
        Ok(Self {
            dp,
            writer,
            _dir: dir,
        })
    }

    fn upsert(&mut self, spec: &FrontendSpec) -> anyhow::Result<()> {
        self.writer.upsert(spec).context("writing the frontend")?;
        Ok(())
    }

    /// Sends a SYN from `client` to the frontend and returns the backend it was DNATed
    /// to, after checking the whole output packet against one built here.
    fn send(
        &self,
        fam: Fam,
        client: SocketAddr,
        backends: &[SocketAddr],
    ) -> anyhow::Result<SocketAddr> {
        let spec = PacketSpec::new(client, SocketAddr::new(fam.node(), NODE_PORT), L4::SYN);
        let out = self.dp.run(Hook::FromNet, &spec.build()?)?;
        ensure!(out.verdict == VERDICT_PASS, "verdict {}", out.verdict);
        for b in backends {
            if out.data == spec.clone().with_dst(*b).build()? {
                return Ok(*b);
            }
        }
        bail!("the output is no backend's DNAT: {:02x?}", out.data)
    }

    /// Forgets every tracked flow, so the next SYN of a tuple is a new flow again.
    fn clear_conntrack(&mut self) -> anyhow::Result<()> {
        for record in self.dp.conntrack()? {
            self.dp.remove_ct(record)?;
        }
        Ok(())
    }

    /// The backend the stored table names for `client`, by address (the kernel's choice
    /// recomputed here from the table and the common flow hash).
    fn table_choice(&self, fam: Fam, client: SocketAddr) -> anyhow::Result<SocketAddr> {
        let key = fam.frontend();
        let service_id = self.writer.service_id(&key).context("service id")?;
        let table = self
            .writer
            .store()
            .get_maglev(&MaglevKey::new(service_id, key.scope))?
            .context("no Maglev table")?;
        let id = table[(fam.flow_hash(client) % table.len() as u32) as usize];
        let b = self
            .writer
            .store()
            .get_backend(key.family(), id)?
            .with_context(|| format!("backend {id} missing"))?;
        Ok(SocketAddr::new(b.addr(), b.port()))
    }
}

fn node(test: &str, name: &str) -> anyhow::Result<Option<Node>> {
    if !require_root(test) {
        return Ok(None);
    }
    sweep_leftovers();
    Ok(Some(Node::new(name)?))
}

#[rstest]
fn a_flow_always_gets_the_backend_its_table_slot_names(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let Some(mut n) = node(
        "a_flow_always_gets_the_backend_its_table_slot_names",
        "slot",
    )?
    else {
        return Ok(());
    };
    let backends: Vec<SocketAddr> = (0..4).map(|i| fam.backend(i)).collect();
    n.upsert(&spec(fam, &backends, SVC_FLAG_MAGLEV, 0))?;
    let mut seen = BTreeSet::new();
    for i in 0..64 {
        let client = fam.client(i * 37);
        let expected = n.table_choice(fam, client)?;
        for round in 0..3 {
            let got = n.send(fam, client, &backends)?;
            ensure!(
                got == expected,
                "{client} round {round}: went to {got}, its table slot names {expected}"
            );
            n.clear_conntrack()?;
        }
        seen.insert(expected);
    }
    // 64 clients over a balanced table of 4 backends: all of them used.
    ensure!(seen.len() == 4, "clients reached only {seen:?}");
    Ok(())
}

/// The control: without the flag the same tuple is spread at random.
#[test]
fn without_the_flag_the_same_tuple_spreads() -> anyhow::Result<()> {
    let fam = Fam::V4;
    let Some(mut n) = node("without_the_flag_the_same_tuple_spreads", "random")? else {
        return Ok(());
    };
    let backends: Vec<SocketAddr> = (0..4).map(|i| fam.backend(i)).collect();
    n.upsert(&spec(fam, &backends, 0, 0))?;
    let client = fam.client(5);
    let mut seen = BTreeSet::new();
    for _ in 0..32 {
        seen.insert(n.send(fam, client, &backends)?);
        n.clear_conntrack()?;
    }
    // 32 uniform picks among 4 all equal: probability 4^-31.
    ensure!(seen.len() > 1, "one tuple always went to {seen:?}");
    Ok(())
}

/// Two nodes: node 2's writer met the backends in another order (through another
/// Service first), so its backend ids differ; the same client tuples still reach the
/// same backend addresses through either node.
#[rstest]
fn two_nodes_send_the_same_clients_to_the_same_backends(
    #[values(Fam::V4, Fam::V6)] fam: Fam,
) -> anyhow::Result<()> {
    let test = "two_nodes_send_the_same_clients_to_the_same_backends";
    let Some(mut n1) = node(test, "n1")? else {
        return Ok(());
    };
    let mut n2 = Node::new("n2")?;
    let backends: Vec<SocketAddr> = (0..6).map(|i| fam.backend(i)).collect();
    n1.upsert(&spec(fam, &backends, SVC_FLAG_MAGLEV, 0))?;

    let other = FrontendSpec {
        key: FrontendKey {
            port: NODE_PORT + 1,
            ..fam.frontend()
        },
        ..spec(fam, &[backends[5], backends[3], backends[1]], 0, 0)
    };
    n2.upsert(&other)?;
    let mut reordered = backends.clone();
    reordered.reverse();
    n2.upsert(&spec(fam, &reordered, SVC_FLAG_MAGLEV, 0))?;
    let ids = |n: &Node| -> Vec<Option<u32>> {
        backends
            .iter()
            .map(|b| n.writer.backend_id(*b, L4Proto::Tcp))
            .collect()
    };
    ensure!(
        ids(&n1) != ids(&n2),
        "the backend ids should differ for the test to mean something: {:?}",
        ids(&n1)
    );

    let mut per_backend: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    for i in 0..1000 {
        let client = fam.client(i);
        let a = n1.send(fam, client, &backends)?;
        let b = n2.send(fam, client, &backends)?;
        ensure!(a == b, "{client}: node 1 sent it to {a}, node 2 to {b}");
        *per_backend.entry(a).or_default() += 1;
    }
    println!(
        "{fam:?}: 1000 client tuples, same backend through both nodes; per backend {per_backend:?}"
    );
    ensure!(per_backend.len() == backends.len(), "{per_backend:?}");
    Ok(())
}

#[test]
fn removing_one_of_n_backends_moves_about_one_nth_of_the_flows() -> anyhow::Result<()> {
    let fam = Fam::V4;
    let Some(mut n) = node(
        "removing_one_of_n_backends_moves_about_one_nth_of_the_flows",
        "churn",
    )?
    else {
        return Ok(());
    };
    const N: u32 = 10;
    const FLOWS: u32 = 1000;
    let all: Vec<SocketAddr> = (0..=N).map(|i| fam.backend(i)).collect();
    let backends = &all[..N as usize];
    let sample = |n: &mut Node, set: &[SocketAddr]| -> anyhow::Result<Vec<SocketAddr>> {
        n.clear_conntrack()?;
        (0..FLOWS)
            .map(|i| n.send(fam, fam.client(i), set))
            .collect()
    };

    n.upsert(&spec(fam, backends, SVC_FLAG_MAGLEV, 0))?;
    let before = sample(&mut n, backends)?;

    let gone = backends[3];
    let rest: Vec<SocketAddr> = backends.iter().copied().filter(|b| *b != gone).collect();
    n.upsert(&spec(fam, &rest, SVC_FLAG_MAGLEV, 0))?;
    let after = sample(&mut n, &rest)?;
    let on_gone = before.iter().filter(|b| **b == gone).count();
    let others_moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count();
    let moved = on_gone + others_moved;
    println!(
        "maglev packet test: removing 1 of {N} backends moved {moved} of {FLOWS} flows ({:.3}; 1/N = {:.3}): {on_gone} from the removed backend, {others_moved} others",
        f64::from(moved as u32) / f64::from(FLOWS),
        1.0 / f64::from(N),
    );
    // The removed backend's flows all moved (nothing reaches it); of the others, only
    // Maglev's small extra disruption (a few per thousand at M = 16381, N = 10).
    ensure!(!after.contains(&gone));
    ensure!(
        others_moved * 20 < FLOWS as usize - on_gone,
        "{others_moved} flows of remaining backends moved"
    );

    // Adding one (the 11th) to the 9: about 1/10 of the flows move, all to it.
    let mut grown = rest.clone();
    grown.push(all[N as usize]);
    n.upsert(&spec(fam, &grown, SVC_FLAG_MAGLEV, 0))?;
    let added = sample(&mut n, &grown)?;
    let moved_add: Vec<(SocketAddr, SocketAddr)> = after
        .iter()
        .zip(&added)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (*a, *b))
        .collect();
    let to_new = moved_add
        .iter()
        .filter(|(_, b)| *b == all[N as usize])
        .count();
    println!(
        "maglev packet test: adding 1 backend to {} moved {} of {FLOWS} flows ({:.3}), {to_new} of them to the new backend",
        N - 1,
        moved_add.len(),
        moved_add.len() as f64 / f64::from(FLOWS),
    );
    ensure!(
        (moved_add.len() - to_new) * 20 < FLOWS as usize,
        "{} flows moved between old backends",
        moved_add.len() - to_new
    );
    Ok(())
}

/// sessionAffinity ClientIP on a Maglev frontend: a fresh remembered backend wins over
/// the table's slot.
#[test]
fn session_affinity_still_wins_over_the_table() -> anyhow::Result<()> {
    let fam = Fam::V4;
    let Some(mut n) = node("session_affinity_still_wins_over_the_table", "affinity")? else {
        return Ok(());
    };
    let backends: Vec<SocketAddr> = (0..4).map(|i| fam.backend(i)).collect();
    n.upsert(&spec(fam, &backends, SVC_FLAG_MAGLEV, 30))?;
    let service_id = n.writer.service_id(&fam.frontend()).context("service id")?;
    let remembered = backends[2];
    let remembered_id = n
        .writer
        .backend_id(remembered, L4Proto::Tcp)
        .context("backend id")?;
    // 16 source ports of one client, i.e. 16 flows the table spreads (some elsewhere).
    let clients: Vec<SocketAddr> = (0..16).map(|i| fam.client(7 + 250 * i)).collect();
    let elsewhere = clients
        .iter()
        .map(|c| n.table_choice(fam, *c))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .filter(|b| *b != remembered)
        .count();
    ensure!(
        elsewhere > 0,
        "every tuple hashes to the remembered backend"
    );
    n.dp.insert_affinity(
        clients[0].ip(),
        service_id,
        AffinityValue {
            last_used_ns: boot_ns()?,
            backend_id: remembered_id,
            _pad: 0,
        },
    )?;
    for client in &clients {
        let got = n.send(fam, *client, &backends)?;
        ensure!(
            got == remembered,
            "{client} went to {got}, not the remembered {remembered}"
        );
    }
    Ok(())
}
