//! The kernel maps' bulk mode (full syncs: one batch lookup per map, writes queued and
//! made with BPF_MAP_UPDATE_BATCH / DELETE_BATCH in call order): the same writer calls
//! leave the kernel maps exactly as the in-memory fake holds them after the same calls
//! entry by entry, read back from the kernel afterwards; a full map still fails the
//! frontend at once and rolls it back. Root only (maps pinned in a folder of this run).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{ensure, Context as _, Result};
use service_lb::dataplane::{
    cleanup, pin, BackendSpec, BpfMaps, Dataplane, DataplaneOptions, FakeMaps, Family, FrontendKey,
    FrontendSpec, L4Proto, MapSizes, MapStore, ServiceWriter, WriteError,
};
use service_lb_common::service::{BACKEND_STATE_ACTIVE, SCOPE_EXTERNAL, SVC_FLAG_CLUSTER_IP};
use service_lb_tests::privileges::require_root;

const PREFIX: &str = "slb-bulk-";
const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Services map capacity of the test data plane.
const SERVICES_MAX: u32 = 1_024;

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Pinned(PathBuf);

impl Pinned {
    fn new() -> Result<Self> {
        ensure!(
            pin::ensure_bpffs(Path::new(BPFFS_ROOT)).is_ok(),
            "{BPFFS_ROOT} is not a bpf filesystem"
        );
        sweep();
        let dir = Path::new(BPFFS_ROOT).join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let pinned = Self(dir);
        let options = DataplaneOptions {
            bpffs: pinned.0.clone(),
            sizes: MapSizes {
                services: SERVICES_MAX,
                backends: 2_048,
                revnat: 512,
                ct_tcp: 1_024,
                ct_any: 1_024,
                ..MapSizes::default()
            },
            ..Default::default()
        };
        drop(Dataplane::open(&options).context("loading the data plane (maps pinned)")?);
        Ok(pinned)
    }

    fn maps(&self) -> Result<BpfMaps> {
        Ok(BpfMaps::open_pinned(&self.0)?)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(e) = cleanup(&self.0) {
            eprintln!("cleaning {}: {e}", self.0.display());
        }
    }
}

/// Folders of dead runs of this test.
fn sweep() {
    let Ok(entries) = std::fs::read_dir(BPFFS_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = cleanup(&entry.path());
        }
    }
}

/// Frontend `i` (IPv4 or IPv6 ClusterIP) with `n` backends; backends of neighbouring
/// frontends overlap (shared backend ids).
fn frontend(i: u16, n: u16) -> FrontendSpec {
    let v6 = i % 5 == 4;
    let addr: IpAddr = if v6 {
        Ipv6Addr::new(0xfd00, 0x19, 0, 0, 0, 0, 0, i).into()
    } else {
        Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8).into()
    };
    let backends = (0..n)
        .map(|b| {
            let host = (i / 2) * 8 + b;
            let ip: IpAddr = if v6 {
                Ipv6Addr::new(0xfd00, 0x18, 0, 1, 0, 0, 0, host).into()
            } else {
                Ipv4Addr::new(198, 18, (host >> 8) as u8, host as u8).into()
            };
            BackendSpec {
                addr: SocketAddr::new(ip, 8080),
                state: BACKEND_STATE_ACTIVE,
                local: b % 2 == 0,
            }
        })
        .collect();
    FrontendSpec {
        key: FrontendKey {
            addr,
            port: 80,
            proto: L4Proto::Tcp,
            scope: SCOPE_EXTERNAL,
        },
        backends,
        flags: SVC_FLAG_CLUSTER_IP,
        affinity_timeout_s: 0,
        source_ranges: vec![],
    }
}

/// The same calls a full sync makes: upserts, a shrink, a growth, removals.
fn program<M: MapStore>(writer: &mut ServiceWriter<M>) -> Result<()> {
    for i in 0..40 {
        writer.upsert(&frontend(i, 10))?;
    }
    writer.upsert(&frontend(3, 4))?;
    writer.upsert(&frontend(7, 12))?;
    for i in [5, 9, 14] {
        writer.remove(&frontend(i, 0).key)?;
    }
    writer.upsert(&frontend(9, 2))?;
    Ok(())
}

/// Everything the control-plane maps hold, sorted, as text (both families).
fn dump<M: MapStore>(maps: &M) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for family in Family::ALL {
        for (k, v) in maps.list_services(family)? {
            out.push(format!("svc {k:?} {v:?}"));
        }
        for (id, v) in maps.list_backends(family)? {
            out.push(format!("be {id} {v:?}"));
        }
        for (id, v) in maps.list_revnat(family)? {
            out.push(format!("rn {id} {v:?}"));
        }
        for (a, v) in maps.list_vips(family)? {
            out.push(format!("vip {a} {v:?}"));
        }
    }
    for (k, v) in maps.list_members()? {
        out.push(format!("member {k:?} {v:?}"));
    }
    out.sort();
    Ok(out)
}

#[test]
fn bulk_writes_leave_the_maps_as_entry_by_entry_writes_do() -> Result<()> {
    if !require_root("bulk_sync") {
        return Ok(());
    }
    let pinned = Pinned::new()?;
    let mut maps = pinned.maps()?;
    maps.begin_bulk()?;
    let mut writer = ServiceWriter::open(maps)?;
    program(&mut writer)?;
    // Reads during bulk mode see the queued writes.
    let spec = frontend(7, 12);
    ensure!(writer.read_frontend(&spec.key)?.as_ref() == Some(&spec));
    let mut maps = writer.into_store();
    maps.end_bulk()?;

    let mut expected = ServiceWriter::open(FakeMaps::new())?;
    program(&mut expected)?;
    let expected = dump(expected.store())?;
    // Read back from the kernel by a fresh handle (no shadow).
    let held = dump(&pinned.maps()?)?;
    ensure!(!held.is_empty());
    ensure!(
        held == expected,
        "kernel maps differ from the fake:\nkernel: {held:#?}\nfake: {expected:#?}"
    );
    Ok(())
}

#[test]
fn a_full_map_fails_the_frontend_at_once_in_bulk_mode() -> Result<()> {
    if !require_root("bulk_sync") {
        return Ok(());
    }
    let pinned = Pinned::new()?;
    let mut maps = pinned.maps()?;
    maps.begin_bulk()?;
    let mut writer = ServiceWriter::open(maps)?;
    // 11 entries (master + 10 slots) per frontend: 93 fit in 1,024, the 94th does not.
    let fit = (SERVICES_MAX / 11) as u16;
    for i in 0..fit {
        writer.upsert(&frontend(i * 5 % 1000, 10))?;
    }
    let last = frontend(fit * 5 % 1000 + 1, 10);
    match writer.upsert(&last) {
        Err(WriteError::MapFull { .. }) => {}
        other => anyhow::bail!("expected a full map, got {other:?}"),
    }
    let mut maps = writer.into_store();
    maps.end_bulk()?;
    let kernel = pinned.maps()?;
    let held = kernel.list_services(Family::V4)?.len() + kernel.list_services(Family::V6)?.len();
    ensure!(held == usize::from(fit) * 11, "{held} service entries");
    ensure!(
        kernel
            .get_service(&service_lb::dataplane::SvcKey::new(
                last.key.addr,
                80,
                6,
                SCOPE_EXTERNAL,
                0
            ))?
            .is_none(),
        "the failed frontend left a master entry"
    );
    Ok(())
}
