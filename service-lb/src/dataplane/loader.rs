//! Loading the embedded object: pins checked first, maps pinned by name under
//! `<bpffs>/maps`, sizes and configuration applied, the four tc programs loaded.

use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use service_lb_common::{
    affinity::{Affinity4Key, Affinity6Key, AffinityValue, MemberKey, MemberValue},
    config::CONFIG_GLOBAL,
    frag::{FragKey4, FragKey6, FragNat4, FragNat6, FragPending},
    hairpin::HAIRPIN_GLOBAL,
    maps,
    northsouth::{NodeAddrs, SnatRev4, SnatRev6, SrcRange4Data, SrcRange6Data},
    policy::{PolFlow, PolPeer4, PolPeer6, PolPod, PolPort},
    sock::{SockRev4Key, SockRev4Value, SockRev6Key, SockRev6Value, SOCK_GLOBAL},
    vip::Scratch,
    Backend4, Backend6, Counter, CtEntry, CtKey4, CtKey6, Hook, Meta, RevNat4, RevNat6, Svc4Key,
    Svc6Key, SvcValue, VipValue,
};
use tracing::{debug, info};

use super::{
    error::DataplaneError,
    layout::{self, MapKind},
    object,
    options::DataplaneOptions,
    pin::{self, RecreatedMap},
};

/// The loaded data plane: maps pinned, programs loaded (not yet attached).
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub(crate) bpffs: PathBuf,
    recreated: Vec<RecreatedMap>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("bpffs", &self.bpffs)
            .field("recreated", &self.recreated)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Loads the embedded object with `options`, reusing the pinned maps under
    /// `options.bpffs` when their layout matches (see `pin::check_pins`).
    pub fn open(options: &DataplaneOptions) -> Result<Dataplane, DataplaneError> {
        if object::is_stub() {
            return Err(DataplaneError::StubObject(object::STUB_HINT));
        }
        Self::open_object(object::bytes(), options)
    }

    /// As `open`, with another object (tests).
    pub fn open_object(
        bytes: &[u8],
        options: &DataplaneOptions,
    ) -> Result<Dataplane, DataplaneError> {
        let bpffs = options.bpffs.as_path();
        pin::ensure_bpffs(bpffs)?;
        pin::create_dirs(bpffs)?;
        let recreated = pin::check_pins(bpffs, &options.sizes, options.on_pin_mismatch)?;

        let pin_paths: Vec<(&'static str, PathBuf)> = maps::ALL
            .iter()
            .map(|&name| (name, pin::map_pin_path(bpffs, name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
            if let Some(size) = layout::sized_by_options(name, &options.sizes) {
                loader.map_max_entries(name, size);
            }
        }
        loader.override_global(CONFIG_GLOBAL, &options.config, true);
        loader.override_global(HAIRPIN_GLOBAL, &options.hairpin, true);
        let mut sock = options.sock;
        if sock.hostns_only() && sock.host_netns_cookie == 0 {
            sock.host_netns_cookie = super::sock::current_netns_cookie()
                .map_err(|e| DataplaneError::io("reading the netns cookie of", "this thread", e))?;
        }
        loader.override_global(SOCK_GLOBAL, &sock, true);
        let mut ebpf = loader.load(bytes).map_err(DataplaneError::Load)?;
        debug!(bpffs = %bpffs.display(), "object loaded, maps pinned");

        check_object_maps(&ebpf)?;
        pin::write_layout_version(bpffs)?;
        load_programs(&mut ebpf)?;
        super::sock::load_programs(&mut ebpf)?;
        info!(bpffs = %bpffs.display(), recreated = recreated.len(), "data plane loaded");
        Ok(Dataplane {
            ebpf,
            bpffs: bpffs.to_path_buf(),
            recreated,
        })
    }

    /// The pin folder.
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// Maps that were unpinned and recreated empty because of a layout mismatch
    /// (only with `PinMismatch::Recreate`).
    pub fn recreated_maps(&self) -> &[RecreatedMap] {
        &self.recreated
    }

    /// Kernel id of the loaded program of `hook` (what `bpftool prog` and tcx queries show).
    pub fn program_id(&mut self, hook: Hook) -> Result<u32, DataplaneError> {
        let program = self.program_mut(hook)?;
        program
            .info()
            .map(|i| i.id())
            .map_err(|source| DataplaneError::Program {
                program: hook.name(),
                what: "reading its info",
                source,
            })
    }

    /// The loaded program of `hook`.
    pub(crate) fn program_mut(
        &mut self,
        hook: Hook,
    ) -> Result<&mut SchedClassifier, DataplaneError> {
        let name = hook.name();
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        program
            .try_into()
            .map_err(|source| DataplaneError::Program {
                program: name,
                what: "is not a tc classifier",
                source,
            })
    }
}

/// Checks that the object defines every map of the common crate, with the common crate's
/// map type and key/value sizes (aya's typed wrappers compare the object's definition).
fn check_object_maps(ebpf: &Ebpf) -> Result<(), DataplaneError> {
    for name in maps::ALL {
        let map = ebpf.map(name).ok_or(DataplaneError::MissingMap(name))?;
        let wanted_kind = layout::wanted(name, &Default::default())
            .map(|l| l.kind)
            .ok_or(DataplaneError::MissingMap(name))?;
        let kind_ok = matches!(
            (wanted_kind, map),
            (MapKind::Hash, Map::HashMap(_))
                | (MapKind::LruHash, Map::LruHashMap(_))
                | (MapKind::Array, Map::Array(_))
                | (MapKind::PerCpuArray, Map::PerCpuArray(_))
                | (MapKind::LpmTrie, Map::LpmTrie(_))
        );
        if !kind_ok {
            return Err(DataplaneError::ObjectMapKind {
                map: name,
                found: variant_name(map),
                wanted: wanted_kind,
            });
        }
        typed_check(name, map)
            .map_err(|source| DataplaneError::ObjectMapMismatch { map: name, source })?;
    }
    Ok(())
}

fn variant_name(map: &Map) -> &'static str {
    match map {
        Map::HashMap(_) => "hash",
        Map::LruHashMap(_) => "lru_hash",
        Map::Array(_) => "array",
        Map::PerCpuArray(_) => "percpu_array",
        Map::PerCpuHashMap(_) => "percpu_hash",
        Map::LpmTrie(_) => "lpm_trie",
        _ => "other",
    }
}

fn typed_check(name: &'static str, map: &Map) -> Result<(), MapError> {
    fn hash<K: aya::Pod, V: aya::Pod>(map: &Map) -> Result<(), MapError> {
        HashMap::<&MapData, K, V>::try_from(map).map(drop)
    }
    match name {
        maps::SERVICES4 => hash::<Svc4Key, SvcValue>(map),
        maps::SERVICES6 => hash::<Svc6Key, SvcValue>(map),
        maps::BACKENDS4 => hash::<u32, Backend4>(map),
        maps::BACKENDS6 => hash::<u32, Backend6>(map),
        maps::REVNAT4 => hash::<u32, RevNat4>(map),
        maps::REVNAT6 => hash::<u32, RevNat6>(map),
        maps::CT4_TCP | maps::CT4_ANY => hash::<CtKey4, CtEntry>(map),
        maps::CT6_TCP | maps::CT6_ANY => hash::<CtKey6, CtEntry>(map),
        maps::COUNTERS => PerCpuArray::<&MapData, Counter>::try_from(map).map(drop),
        maps::META => Array::<&MapData, Meta>::try_from(map).map(drop),
        maps::VIPS4 => hash::<[u8; 4], VipValue>(map),
        maps::VIPS6 => hash::<[u8; 16], VipValue>(map),
        maps::SERVICE_CIDRS4 => LpmTrie::<&MapData, [u8; 4], u32>::try_from(map).map(drop),
        maps::SERVICE_CIDRS6 => LpmTrie::<&MapData, [u8; 16], u32>::try_from(map).map(drop),
        maps::SCRATCH => PerCpuArray::<&MapData, Scratch>::try_from(map).map(drop),
        maps::AFFINITY4 => hash::<Affinity4Key, AffinityValue>(map),
        maps::AFFINITY6 => hash::<Affinity6Key, AffinityValue>(map),
        maps::MEMBERS => hash::<MemberKey, MemberValue>(map),
        maps::FRAG4 => hash::<FragKey4, FragNat4>(map),
        maps::FRAG6 => hash::<FragKey6, FragNat6>(map),
        maps::FRAG_PENDING => PerCpuArray::<&MapData, FragPending>::try_from(map).map(drop),
        maps::SOCK_REV4 => hash::<SockRev4Key, SockRev4Value>(map),
        maps::SOCK_REV6 => hash::<SockRev6Key, SockRev6Value>(map),
        maps::POL_PODS4 => hash::<[u8; 4], PolPod>(map),
        maps::POL_PODS6 => hash::<[u8; 16], PolPod>(map),
        maps::POL_PEERS4 => LpmTrie::<&MapData, PolPeer4, u32>::try_from(map).map(drop),
        maps::POL_PEERS6 => LpmTrie::<&MapData, PolPeer6, u32>::try_from(map).map(drop),
        maps::POL_PORTS => LpmTrie::<&MapData, PolPort, u32>::try_from(map).map(drop),
        maps::POL_FLOWS4 => hash::<CtKey4, PolFlow>(map),
        maps::POL_FLOWS6 => hash::<CtKey6, PolFlow>(map),
        maps::POL_CONFIG => Array::<&MapData, u32>::try_from(map).map(drop),
        maps::SERVICE_NAMES => hash::<u32, service_lb_common::SvcName>(map),
        maps::MAGLEV => hash::<
            service_lb_common::maglev::MaglevKey,
            service_lb_common::maglev::MaglevTable,
        >(map),
        maps::SRC_RANGES4 => LpmTrie::<&MapData, SrcRange4Data, u32>::try_from(map).map(drop),
        maps::SRC_RANGES6 => LpmTrie::<&MapData, SrcRange6Data, u32>::try_from(map).map(drop),
        maps::NODE_ADDRS => Array::<&MapData, NodeAddrs>::try_from(map).map(drop),
        maps::SNAT4 => hash::<CtKey4, SnatRev4>(map),
        maps::SNAT6 => hash::<CtKey6, SnatRev6>(map),
        _ => Ok(()),
    }
}

fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    for hook in Hook::TC {
        let name = hook.name();
        let program = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        let classifier: &mut SchedClassifier =
            program
                .try_into()
                .map_err(|source| DataplaneError::Program {
                    program: name,
                    what: "is not a tc classifier",
                    source,
                })?;
        classifier
            .load()
            .map_err(|source| DataplaneError::Program {
                program: name,
                what: "loading into the kernel",
                source,
            })?;
    }
    Ok(())
}
