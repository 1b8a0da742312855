//! The real eBPF object, loaded for BPF_PROG_TEST_RUN (no pinning, nothing attached), and
//! typed access to its maps through the common crate's types.

use std::net::IpAddr;

use anyhow::{anyhow, bail, ensure, Context as _};
use aya::{
    maps::{lpm_trie, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
    Ebpf, EbpfLoader, Pod,
};
use service_lb::dataplane::{object, policy_maps::BpfPolicyMaps};
use service_lb_common::{
    affinity::{Affinity4Key, Affinity6Key, AffinityValue, MemberKey, MemberValue},
    config::CONFIG_GLOBAL,
    counters::counter_index,
    hairpin::{HairpinConfig, HAIRPIN_GLOBAL},
    maps,
    northsouth::{NodeAddrs, SnatRev4, SnatRev6, SrcRange4Key, SrcRange6Key, SRC_RANGE_ALLOWED},
    service::{SCOPE_EXTERNAL, SVC_FLAG_CLUSTER_IP},
    Backend4, Backend6, Counter, CtEntry, CtKey4, CtKey6, DataplaneConfig, Hook, Reason, RevNat4,
    RevNat6, Svc4Key, Svc6Key, SvcValue, VipValue,
};

/// Map sizes for tests: small, so many objects can be loaded at once.
const TEST_MAP_SIZES: [(&str, u32); 26] = [
    (maps::SERVICES4, 1024),
    (maps::SERVICES6, 1024),
    (maps::BACKENDS4, 1024),
    (maps::BACKENDS6, 1024),
    (maps::REVNAT4, 1024),
    (maps::REVNAT6, 1024),
    (maps::CT4_TCP, 16_384),
    (maps::CT4_ANY, 16_384),
    (maps::CT6_TCP, 16_384),
    (maps::CT6_ANY, 16_384),
    (maps::VIPS4, 1024),
    (maps::VIPS6, 1024),
    (maps::AFFINITY4, 1024),
    (maps::AFFINITY6, 1024),
    (maps::MEMBERS, 1024),
    (maps::POL_PODS4, 1024),
    (maps::POL_PODS6, 1024),
    (maps::POL_PEERS4, 4096),
    (maps::POL_PEERS6, 4096),
    (maps::POL_PORTS, 4096),
    (maps::POL_FLOWS4, 4096),
    (maps::POL_FLOWS6, 4096),
    (maps::SRC_RANGES4, 1024),
    (maps::SRC_RANGES6, 1024),
    (maps::SNAT4, 4096),
    (maps::SNAT6, 4096),
];

/// Environment variable that makes every `Dataplane::run` a CHECKSUM_COMPLETE run
/// (`cargo xtask test` runs the packet suites a second time with it).
pub const CHECKSUM_COMPLETE_ENV: &str = "SLB_TEST_CHECKSUM_COMPLETE";

fn checksum_complete_mode() -> bool {
    std::env::var_os(CHECKSUM_COMPLETE_ENV).is_some_and(|v| v == "1")
}

/// `BPF_PROG_TEST_RUN` command of `bpf()`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// Test-run flag: the skb is CHECKSUM_COMPLETE and its csum is validated after the run
/// (Linux >= 6.11).
const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;

/// `union bpf_attr`'s `test` member (BPF_PROG_TEST_RUN), as the kernel lays it out.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);

/// Room for what a program may add to a packet (it adds nothing today).
const DATA_OUT_SLACK: usize = 256;

/// The verdict of one run and the packet as the program left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub verdict: i32,
    pub data: Vec<u8>,
}

/// A backend of a frontend: id in the backends map, address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendRef {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
}

/// A frontend and its backends, written like the daemon writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
    pub service_id: u32,
    pub flags: u16,
    pub backends: Vec<BackendRef>,
    /// sessionAffinity ClientIP timeout (0 = off).
    pub affinity_timeout_s: u32,
}

impl Frontend {
    pub fn new(vip: &str, port: u16, proto: u8, service_id: u32) -> Self {
        let vip = vip
            .parse()
            .unwrap_or_else(|e| panic!("bad vip {vip:?}: {e}"));
        Self {
            vip,
            port,
            proto,
            scope: SCOPE_EXTERNAL,
            service_id,
            flags: SVC_FLAG_CLUSTER_IP,
            backends: Vec::new(),
            affinity_timeout_s: 0,
        }
    }

    /// Adds a backend `addr:port` with id `id`.
    pub fn backend(mut self, id: u32, addr: &str, port: u16) -> Self {
        let addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad backend {addr:?}: {e}"));
        self.backends.push(BackendRef { id, addr, port });
        self
    }
}

/// One conntrack entry, from whichever of the four maps it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtRecord {
    V4 {
        map: &'static str,
        key: CtKey4,
        entry: CtEntry,
    },
    V6 {
        map: &'static str,
        key: CtKey6,
        entry: CtEntry,
    },
}

impl CtRecord {
    pub fn entry(&self) -> &CtEntry {
        match self {
            CtRecord::V4 { entry, .. } | CtRecord::V6 { entry, .. } => entry,
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the object with the default configuration.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_with(DataplaneConfig::DEFAULT)
    }

    /// Loads the object with `config` patched into `SLB_CONFIG`, and loads (verifies)
    /// all four programs.
    pub fn load_with(config: DataplaneConfig) -> anyhow::Result<Self> {
        Self::load_patched(config, None)
    }

    /// As `load_with`, with `hairpin` patched into `SLB_HAIRPIN` too (the object's own
    /// value: hairpin off).
    pub fn load_with_hairpin(
        config: DataplaneConfig,
        hairpin: HairpinConfig,
    ) -> anyhow::Result<Self> {
        Self::load_patched(config, Some(hairpin))
    }

    fn load_patched(
        config: DataplaneConfig,
        hairpin: Option<HairpinConfig>,
    ) -> anyhow::Result<Self> {
        ensure!(!object::is_stub(), object::STUB_HINT);
        let mut loader = EbpfLoader::new();
        for (name, size) in TEST_MAP_SIZES {
            loader.map_max_entries(name, size);
        }
        loader.override_global(CONFIG_GLOBAL, &config, true);
        if let Some(hairpin) = &hairpin {
            loader.override_global(HAIRPIN_GLOBAL, hairpin, true);
        }
        let mut ebpf = loader
            .load(object::bytes())
            .context("loading the eBPF object")?;
        for hook in Hook::TC {
            let program: &mut SchedClassifier = ebpf
                .program_mut(hook.name())
                .with_context(|| format!("program {} missing from the object", hook.name()))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("verifying program {}", hook.name()))?;
        }
        Ok(Self { ebpf })
    }

    fn program(&self, hook: Hook) -> anyhow::Result<&SchedClassifier> {
        let program = self
            .ebpf
            .program(hook.name())
            .with_context(|| format!("program {}", hook.name()))?;
        Ok(program.try_into()?)
    }

    /// Runs the program of `hook` once on `packet` (a CHECKSUM_NONE skb, or with
    /// `SLB_TEST_CHECKSUM_COMPLETE=1` in the environment a CHECKSUM_COMPLETE one whose csum
    /// the kernel validates after the run: see `run_checksum_complete`).
    pub fn run(&self, hook: Hook, packet: &[u8]) -> anyhow::Result<RunOutput> {
        if checksum_complete_mode() {
            return self.run_checksum_complete(hook, packet);
        }
        let mut out = vec![0u8; packet.len() + DATA_OUT_SLACK];
        let result = self
            .program(hook)?
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", hook.name()))?;
        out.truncate(usize::try_from(result.data_size_out)?);
        Ok(RunOutput {
            verdict: result.return_value as i32,
            data: out,
        })
    }

    /// Runs the program of `hook` once on `packet` as a CHECKSUM_COMPLETE skb: the kernel
    /// seeds `skb->csum` from the packet (`BPF_F_TEST_SKB_CHECKSUM_COMPLETE`, which aya 0.14
    /// does not expose, hence the raw `bpf()` call) and, after the program ran, fails the
    /// run with EBADMSG when `skb->csum` no longer matches the packet the program left.
    pub fn run_checksum_complete(&self, hook: Hook, packet: &[u8]) -> anyhow::Result<RunOutput> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let program = self.program(hook)?;
        let fd = program
            .fd()
            .with_context(|| format!("fd of {}", hook.name()))?
            .as_fd()
            .as_raw_fd();
        let mut out = vec![0u8; packet.len() + DATA_OUT_SLACK];
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(fd)?,
            data_size_in: u32::try_from(packet.len())?,
            data_size_out: u32::try_from(out.len())?,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            flags: BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
            ..TestRunAttr::default()
        };
        // SAFETY: `attr` is the kernel's `bpf_attr.test` layout, zero where unused; the
        // data pointers point at live buffers of the sizes given, for the whole call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBADMSG) {
                bail!(
                    "{}: skb->csum no longer matches the packet after the program ran (EBADMSG)",
                    hook.name()
                );
            }
            return Err(e).with_context(|| {
                format!(
                    "BPF_PROG_TEST_RUN of {} with CHECKSUM_COMPLETE",
                    hook.name()
                )
            });
        }
        out.truncate(usize::try_from(attr.data_size_out)?);
        Ok(RunOutput {
            verdict: attr.retval as i32,
            data: out,
        })
    }

    /// Runs the program of `hook` `repeat` times on `packet` in the kernel; returns the
    /// kernel's average time per run.
    pub fn run_repeated(
        &self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
    ) -> anyhow::Result<std::time::Duration> {
        let result = self
            .program(hook)?
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {} x{repeat}", hook.name()))?;
        Ok(result.duration)
    }

    fn map(&self, name: &str) -> anyhow::Result<&Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    /// Whether the map `name` is an LRU hash (what conntrack must use).
    pub fn is_lru_hash(&self, name: &str) -> anyhow::Result<bool> {
        Ok(matches!(self.map(name)?, Map::LruHashMap(_)))
    }

    fn insert<K: Pod, V: Pod>(&mut self, name: &str, key: K, value: V) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, K, V> = HashMap::try_from(self.map_mut(name)?)?;
        map.insert(key, value, 0)
            .with_context(|| format!("insert into {name}"))
    }

    fn remove<K: Pod, V: Pod>(&mut self, name: &str, key: &K) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, K, V> = HashMap::try_from(self.map_mut(name)?)?;
        map.remove(key)
            .with_context(|| format!("remove from {name}"))
    }

    fn entries<K: Pod, V: Pod>(&self, name: &str) -> anyhow::Result<Vec<(K, V)>> {
        let map: HashMap<&MapData, K, V> = HashMap::try_from(self.map(name)?)?;
        map.iter()
            .map(|kv| kv.with_context(|| format!("iterating {name}")))
            .collect()
    }

    /// Writes a frontend in the daemon's safe order: backends, memberships, slots, revnat,
    /// then the master entry (with its count) last.
    pub fn install_frontend(&mut self, frontend: &Frontend) -> anyhow::Result<()> {
        for backend in &frontend.backends {
            self.install_backend(backend, frontend.proto)?;
        }
        for backend in &frontend.backends {
            self.insert(
                maps::MEMBERS,
                MemberKey::new(frontend.service_id, backend.id),
                MemberValue::IN_SLOTS,
            )?;
        }
        for (i, backend) in frontend.backends.iter().enumerate() {
            let slot = u16::try_from(i + 1)?;
            self.insert_service(
                frontend,
                slot,
                SvcValue::slot(backend.id, frontend.service_id),
            )?;
        }
        self.install_revnat(frontend)?;
        let count = u32::try_from(frontend.backends.len())?;
        self.insert_service(
            frontend,
            0,
            SvcValue::master(
                count,
                frontend.service_id,
                frontend.flags,
                frontend.affinity_timeout_s,
            ),
        )
    }

    /// Writes only the master entry of `frontend` (e.g. to point it at fewer slots).
    pub fn set_master(&mut self, frontend: &Frontend, count: u32) -> anyhow::Result<()> {
        self.insert_service(
            frontend,
            0,
            SvcValue::master(
                count,
                frontend.service_id,
                frontend.flags,
                frontend.affinity_timeout_s,
            ),
        )
    }

    fn insert_service(&mut self, f: &Frontend, slot: u16, value: SvcValue) -> anyhow::Result<()> {
        let port_be = f.port.to_be();
        match f.vip {
            IpAddr::V4(vip) => self.insert(
                maps::SERVICES4,
                Svc4Key::new(vip.octets(), port_be, f.proto, f.scope, slot),
                value,
            ),
            IpAddr::V6(vip) => self.insert(
                maps::SERVICES6,
                Svc6Key::new(vip.octets(), port_be, f.proto, f.scope, slot),
                value,
            ),
        }
    }

    pub fn install_backend(&mut self, b: &BackendRef, proto: u8) -> anyhow::Result<()> {
        let port_be = b.port.to_be();
        match b.addr {
            IpAddr::V4(a) => self.insert(
                maps::BACKENDS4,
                b.id,
                Backend4::new(a.octets(), port_be, proto, 0, 0),
            ),
            IpAddr::V6(a) => self.insert(
                maps::BACKENDS6,
                b.id,
                Backend6::new(a.octets(), port_be, proto, 0, 0),
            ),
        }
    }

    pub fn remove_backend(&mut self, b: &BackendRef) -> anyhow::Result<()> {
        match b.addr {
            IpAddr::V4(_) => self.remove::<u32, Backend4>(maps::BACKENDS4, &b.id),
            IpAddr::V6(_) => self.remove::<u32, Backend6>(maps::BACKENDS6, &b.id),
        }
    }

    pub fn install_revnat(&mut self, f: &Frontend) -> anyhow::Result<()> {
        let port_be = f.port.to_be();
        match f.vip {
            IpAddr::V4(vip) => self.insert(
                maps::REVNAT4,
                f.service_id,
                RevNat4::new(vip.octets(), port_be),
            ),
            IpAddr::V6(vip) => self.insert(
                maps::REVNAT6,
                f.service_id,
                RevNat6::new(vip.octets(), port_be),
            ),
        }
    }

    pub fn remove_revnat(&mut self, f: &Frontend) -> anyhow::Result<()> {
        match f.vip {
            IpAddr::V4(_) => self.remove::<u32, RevNat4>(maps::REVNAT4, &f.service_id),
            IpAddr::V6(_) => self.remove::<u32, RevNat6>(maps::REVNAT6, &f.service_id),
        }
    }

    /// Writes `addr` into the VIP map of its family (a ClusterIP address with `frontends`
    /// programmed frontends), as the daemon's writer does.
    pub fn install_vip(&mut self, addr: IpAddr, frontends: u32) -> anyhow::Result<()> {
        let value = VipValue::cluster_ip(frontends);
        match addr {
            IpAddr::V4(a) => self.insert(maps::VIPS4, a.octets(), value),
            IpAddr::V6(a) => self.insert(maps::VIPS6, a.octets(), value),
        }
    }

    /// Writes `addr/prefix_len` into the service-CIDR trie of its family.
    pub fn install_service_cidr(&mut self, addr: IpAddr, prefix_len: u32) -> anyhow::Result<()> {
        let allocated = service_lb_common::vip::SERVICE_CIDR_ALLOCATED;
        match addr {
            IpAddr::V4(a) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], u32> =
                    LpmTrie::try_from(self.map_mut(maps::SERVICE_CIDRS4)?)?;
                trie.insert(&lpm_trie::Key::new(prefix_len, a.octets()), allocated, 0)
            }
            IpAddr::V6(a) => {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], u32> =
                    LpmTrie::try_from(self.map_mut(maps::SERVICE_CIDRS6)?)?;
                trie.insert(&lpm_trie::Key::new(prefix_len, a.octets()), allocated, 0)
            }
        }
        .context("insert into a service-CIDR trie")
    }

    /// Deletes the membership of `backend_id` in the frontend `service_id` (what the
    /// daemon does after the backend's last slot is gone).
    pub fn remove_member(&mut self, service_id: u32, backend_id: u32) -> anyhow::Result<()> {
        self.remove::<MemberKey, MemberValue>(
            maps::MEMBERS,
            &MemberKey::new(service_id, backend_id),
        )
    }

    /// Every sessionAffinity entry of the family of `client`'s kind, as
    /// (client, service id, value).
    pub fn affinity(&self) -> anyhow::Result<Vec<(IpAddr, u32, AffinityValue)>> {
        let mut all: Vec<(IpAddr, u32, AffinityValue)> = self
            .entries::<Affinity4Key, AffinityValue>(maps::AFFINITY4)?
            .into_iter()
            .map(|(k, v)| (IpAddr::from(k.client), k.service_id, v))
            .collect();
        all.extend(
            self.entries::<Affinity6Key, AffinityValue>(maps::AFFINITY6)?
                .into_iter()
                .map(|(k, v)| (IpAddr::from(k.client), k.service_id, v)),
        );
        Ok(all)
    }

    /// Writes a sessionAffinity entry directly (e.g. an old one).
    pub fn insert_affinity(
        &mut self,
        client: IpAddr,
        service_id: u32,
        value: AffinityValue,
    ) -> anyhow::Result<()> {
        match client {
            IpAddr::V4(a) => self.insert(
                maps::AFFINITY4,
                Affinity4Key::new(a.octets(), service_id),
                value,
            ),
            IpAddr::V6(a) => self.insert(
                maps::AFFINITY6,
                Affinity6Key::new(a.octets(), service_id),
                value,
            ),
        }
    }

    /// Writes a conntrack entry directly (e.g. an already expired one).
    pub fn insert_ct(&mut self, record: CtRecord) -> anyhow::Result<()> {
        match record {
            CtRecord::V4 { map, key, entry } => self.insert(map, key, entry),
            CtRecord::V6 { map, key, entry } => self.insert(map, key, entry),
        }
    }

    /// Removes a conntrack entry (as an LRU eviction would); the record's entry is ignored.
    pub fn remove_ct(&mut self, record: CtRecord) -> anyhow::Result<()> {
        match record {
            CtRecord::V4 { map, key, .. } => self.remove::<CtKey4, CtEntry>(map, &key),
            CtRecord::V6 { map, key, .. } => self.remove::<CtKey6, CtEntry>(map, &key),
        }
    }

    /// Every entry of the four conntrack maps.
    pub fn conntrack(&self) -> anyhow::Result<Vec<CtRecord>> {
        let mut all = Vec::new();
        for map in [maps::CT4_TCP, maps::CT4_ANY] {
            all.extend(
                self.entries::<CtKey4, CtEntry>(map)?
                    .into_iter()
                    .map(|(key, entry)| CtRecord::V4 { map, key, entry }),
            );
        }
        for map in [maps::CT6_TCP, maps::CT6_ANY] {
            all.extend(
                self.entries::<CtKey6, CtEntry>(map)?
                    .into_iter()
                    .map(|(key, entry)| CtRecord::V6 { map, key, entry }),
            );
        }
        Ok(all)
    }

    /// The (hook, reason) counters that are not zero, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<(Hook, Reason, Counter)>> {
        let array: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map(maps::COUNTERS)?)?;
        let mut moved = Vec::new();
        for hook in Hook::ALL {
            for reason in Reason::ALL {
                let per_cpu = array
                    .get(&counter_index(hook, reason), 0)
                    .with_context(|| format!("counter {}/{}", hook.name(), reason.name()))?;
                let total = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
                if total != Counter::default() {
                    moved.push((hook, reason, total));
                }
            }
        }
        Ok(moved)
    }

    /// The object's NetworkPolicy maps, taken out of it (the programs keep using them), for
    /// a `PolicyWriter`.
    pub fn take_policy_maps(&mut self) -> anyhow::Result<BpfPolicyMaps> {
        let ebpf = &mut self.ebpf;
        Ok(BpfPolicyMaps::from_maps(|name| {
            ebpf.take_map(name)
                .ok_or(service_lb::dataplane::DataplaneError::MissingMap(name))
        })?)
    }

    /// Runs `packet` through `hook` once and checks the verdict and that exactly the counter
    /// (hook, reason) moved by this packet.
    pub fn run_counted(
        &self,
        hook: Hook,
        packet: &[u8],
        verdict: i32,
        reason: Reason,
    ) -> anyhow::Result<RunOutput> {
        let before = self.counters()?;
        let out = self.run(hook, packet)?;
        ensure!(
            out.verdict == verdict,
            "{}: verdict {}, expected {verdict} ({})",
            hook.name(),
            out.verdict,
            reason.name()
        );
        self.expect_counted(&before, hook, reason, packet.len())?;
        Ok(out)
    }

    /// Fails unless the counters moved since `before` by exactly one packet of `len`
    /// bytes, under (`hook`, `reason`), and nowhere else.
    pub fn expect_counted(
        &self,
        before: &[(Hook, Reason, Counter)],
        hook: Hook,
        reason: Reason,
        len: usize,
    ) -> anyhow::Result<()> {
        let after = self.counters()?;
        let get = |set: &[(Hook, Reason, Counter)], h: Hook, r: Reason| {
            set.iter()
                .find(|(sh, sr, _)| *sh == h && *sr == r)
                .map(|(_, _, c)| *c)
                .unwrap_or_default()
        };
        for h in Hook::ALL {
            for r in Reason::ALL {
                let (b, a) = (get(before, h, r), get(&after, h, r));
                let want = if (h, r) == (hook, reason) {
                    Counter {
                        packets: b.packets + 1,
                        bytes: b.bytes + len as u64,
                    }
                } else {
                    b
                };
                if a != want {
                    bail!(
                        "counter {}/{}: {a:?}, expected {want:?} (packet counted under {}/{})",
                        h.name(),
                        r.name(),
                        hook.name(),
                        reason.name()
                    );
                }
            }
        }
        Ok(())
    }
}

/// The conntrack map a flow of `proto` lives in, for the family of `addr`.
pub fn ct_map_for(addr: IpAddr, proto: u8) -> &'static str {
    let tcp = proto == service_lb_common::proto::IPPROTO_TCP;
    match (addr, tcp) {
        (IpAddr::V4(_), true) => maps::CT4_TCP,
        (IpAddr::V4(_), false) => maps::CT4_ANY,
        (IpAddr::V6(_), true) => maps::CT6_TCP,
        (IpAddr::V6(_), false) => maps::CT6_ANY,
    }
}

/// The conntrack record keyed by (src, dst, proto, dir), with `entry`.
pub fn ct_record(
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    proto: u8,
    dir: u8,
    entry: CtEntry,
) -> anyhow::Result<CtRecord> {
    let map = ct_map_for(src.ip(), proto);
    let (sport, dport) = (src.port().to_be(), dst.port().to_be());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ok(CtRecord::V4 {
            map,
            key: CtKey4::new(s.octets(), d.octets(), sport, dport, proto, dir),
            entry,
        }),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ok(CtRecord::V6 {
            map,
            key: CtKey6::new(s.octets(), d.octets(), sport, dport, proto, dir),
            entry,
        }),
        _ => Err(anyhow!("mixed families {src} -> {dst}")),
    }
}

/// North-south maps (`service_lb_common::northsouth`), written as the daemon writes them.
impl Dataplane {
    /// Writes this node's addresses (`SLB_NODEADDR_V1`, index 0).
    pub fn set_node_addrs(&mut self, addrs: NodeAddrs) -> anyhow::Result<()> {
        let mut array: aya::maps::Array<&mut MapData, NodeAddrs> =
            aya::maps::Array::try_from(self.map_mut(maps::NODE_ADDRS)?)?;
        array.set(0, addrs, 0).context("writing the node addresses")
    }

    /// Allows `addr/range_len` as a client of frontend `service_id`.
    pub fn install_src_range(
        &mut self,
        service_id: u32,
        addr: IpAddr,
        range_len: u32,
    ) -> anyhow::Result<()> {
        match addr {
            IpAddr::V4(a) => {
                let k = SrcRange4Key::new(service_id, a.octets(), range_len);
                let mut trie: LpmTrie<&mut MapData, _, u32> =
                    LpmTrie::try_from(self.map_mut(maps::SRC_RANGES4)?)?;
                trie.insert(
                    &lpm_trie::Key::new(k.prefix_len, k.data()),
                    SRC_RANGE_ALLOWED,
                    0,
                )
            }
            IpAddr::V6(a) => {
                let k = SrcRange6Key::new(service_id, a.octets(), range_len);
                let mut trie: LpmTrie<&mut MapData, _, u32> =
                    LpmTrie::try_from(self.map_mut(maps::SRC_RANGES6)?)?;
                trie.insert(
                    &lpm_trie::Key::new(k.prefix_len, k.data()),
                    SRC_RANGE_ALLOWED,
                    0,
                )
            }
        }
        .context("inserting a source range")
    }

    /// Every IPv4 SNAT entry: reply tuple -> client.
    pub fn snat4(&self) -> anyhow::Result<Vec<(CtKey4, SnatRev4)>> {
        self.entries(maps::SNAT4)
    }

    /// Every IPv6 SNAT entry: reply tuple -> client.
    pub fn snat6(&self) -> anyhow::Result<Vec<(CtKey6, SnatRev6)>> {
        self.entries(maps::SNAT6)
    }
}
