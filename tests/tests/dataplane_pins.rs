//! Privileged tests of the data-plane layer against the real kernel: pins, layout checks,
//! TCX attachments in a network namespace made by the test, cleanup.
//!
//! Each test uses its own bpffs folder `/sys/fs/bpf/slb-test-<pid>-<n>` and its own
//! network namespace `slb-test-<pid>-<n>`, removed by Drop guards; leftovers of dead runs
//! are swept first. Nothing is attached in the root network namespace.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use nix::sched::{setns, CloneFlags};
use service_lb::dataplane::{
    attach::attach_type, cleanup, pin, BackendSpec, BpfMaps, Dataplane, DataplaneError,
    DataplaneOptions, FrontendKey, FrontendSpec, L4Proto, MapSizes, PinMismatch, ServiceWriter,
};
use service_lb_common::{maps, Hook};
use service_lb_tests::privileges::require_root;

const PREFIX: &str = "slb-test-";
const BPFFS_ROOT: &str = "/sys/fs/bpf";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name() -> String {
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Small maps: the tests do not need the production sizes.
fn small_sizes() -> MapSizes {
    MapSizes {
        services: 1024,
        backends: 512,
        revnat: 512,
        ct_tcp: 1024,
        ct_any: 1024,
        policy_pods: 256,
        policy_peers: 1024,
        policy_ports: 1024,
        policy_flows: 1024,
    }
}

/// A bpffs folder of this test; `cleanup` on drop (detaches links, unpins maps).
struct BpffsDir(PathBuf);

impl BpffsDir {
    fn new() -> Result<Self> {
        ensure!(
            pin::ensure_bpffs(Path::new(BPFFS_ROOT)).is_ok(),
            "{BPFFS_ROOT} is not a bpf filesystem: run `mount -t bpf bpf {BPFFS_ROOT}`"
        );
        Ok(Self(Path::new(BPFFS_ROOT).join(unique_name())))
    }

    fn options(&self) -> DataplaneOptions {
        DataplaneOptions {
            bpffs: self.0.clone(),
            sizes: small_sizes(),
            ..Default::default()
        }
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        if let Err(e) = cleanup(&self.0) {
            eprintln!("cleaning {}: {e}", self.0.display());
        }
    }
}

/// A network namespace of this test, deleted on drop.
struct TestNetns(String);

impl TestNetns {
    fn new() -> Result<Self> {
        let name = unique_name();
        ip(&["netns", "add", &name])?;
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ...`: only this namespace is configured.
    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs `f` on a dedicated thread that entered the namespace with setns().
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new("/run/netns").join(&self.0);
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<T> {
                    let handle =
                        File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    setns(handle, CloneFlags::CLONE_NEWNET).context("setns")?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the netns thread panicked"))?
        })
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.0]) {
            eprintln!("deleting netns {}: {e}", self.0);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes bpffs folders and namespaces of earlier runs whose process is gone.
fn sweep_leftovers() {
    let dead = |name: &str| {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
    };
    for (dir, is_netns) in [(BPFFS_ROOT, false), ("/run/netns", true)] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !dead(&name) {
                continue;
            }
            let result = if is_netns {
                ip(&["netns", "del", &name])
            } else {
                cleanup(&entry.path()).map(drop).map_err(Into::into)
            };
            if let Err(e) = result {
                eprintln!("sweeping {name}: {e}");
            }
        }
    }
}

/// The real object, or a skip message while the eBPF crate is not built.
fn have_object(test: &str) -> bool {
    if service_lb::dataplane::object::is_stub() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{test}: the eBPF object is a stub and CI=true forbids skipping");
        }
        eprintln!("{test}: skipped, built without the eBPF object");
        return false;
    }
    true
}

fn map_id(bpffs: &Path, map: &str) -> Result<u32> {
    Ok(MapData::from_pin(pin::map_pin_path(bpffs, map))?
        .info()?
        .id())
}

fn frontend() -> FrontendSpec {
    let key = FrontendKey {
        addr: "198.19.0.10".parse().unwrap(),
        port: 80,
        proto: L4Proto::Tcp,
        scope: 0,
    };
    let be = |a: &str| BackendSpec {
        addr: a.parse::<SocketAddr>().unwrap(),
        state: 0,
        local: true,
    };
    FrontendSpec {
        key,
        backends: vec![be("198.18.1.2:8080"), be("198.18.1.3:8080")],
        flags: 0,
        affinity_timeout_s: 0,
        source_ranges: Vec::new(),
    }
}

#[test]
fn load_pins_every_map_and_reopen_reuses_them() -> Result<()> {
    if !require_root("load_pins_every_map_and_reopen_reuses_them") || !have_object("load_pins") {
        return Ok(());
    }
    sweep_leftovers();
    let dir = BpffsDir::new()?;
    let first = Dataplane::open(&dir.options())?;
    for map in maps::ALL {
        ensure!(
            pin::map_pin_path(&dir.0, map).exists(),
            "{map} is not pinned"
        );
    }
    let ids_before: Vec<u32> = maps::ALL
        .iter()
        .map(|m| map_id(&dir.0, m))
        .collect::<Result<_>>()?;
    let mut writer = ServiceWriter::open(BpfMaps::of(&first)?)?;
    let written = writer.upsert(&frontend())?;
    // `inspect services` reads the kernel maps back through the same pins.
    let rows = service_lb::cli::inspect::services::rows(writer.store())?;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].frontend, "198.19.0.10:80/tcp");
    assert_eq!(
        rows[0].backends,
        vec!["198.18.1.2:8080".to_string(), "198.18.1.3:8080".to_string()]
    );
    let counters = writer.store().counters()?;
    assert_eq!(
        counters.len(),
        (Hook::COUNT * service_lb_common::Reason::COUNT) as usize
    );
    drop(writer);
    drop(first);

    // A second load (a daemon restart) reuses the very same maps and their content.
    let second = Dataplane::open(&dir.options())?;
    ensure!(second.recreated_maps().is_empty());
    let ids_after: Vec<u32> = maps::ALL
        .iter()
        .map(|m| map_id(&dir.0, m))
        .collect::<Result<_>>()?;
    assert_eq!(
        ids_before, ids_after,
        "maps were recreated instead of reused"
    );
    let maps = BpfMaps::of(&second)?;
    assert_eq!(maps.layout_version()?, maps::LAYOUT_VERSION);
    let mut writer = ServiceWriter::open(maps)?;
    assert_eq!(writer.service_id(&frontend().key), Some(written.service_id));
    assert_eq!(
        writer.upsert(&frontend())?,
        written,
        "ids recovered from the maps"
    );
    writer.remove(&frontend().key)?;
    Ok(())
}

#[test]
fn a_pin_with_a_wrong_layout_is_refused_with_the_map_name() -> Result<()> {
    if !require_root("a_pin_with_a_wrong_layout_is_refused_with_the_map_name")
        || !have_object("wrong_layout")
    {
        return Ok(());
    }
    sweep_leftovers();
    let dir = BpffsDir::new()?;
    pin::create_dirs(&dir.0)?;
    // A foreign map under our name: u32 -> u32 instead of u32 -> Backend4.
    let foreign = HashMap::<MapData, u32, u32>::create(16, 0)?;
    foreign.pin(pin::map_pin_path(&dir.0, maps::BACKENDS4))?;

    let err = Dataplane::open(&dir.options()).expect_err("a foreign pin was reused");
    assert!(
        matches!(&err, DataplaneError::PinLayoutMismatch { map, .. } if *map == maps::BACKENDS4),
        "unexpected error: {err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(maps::BACKENDS4) && text.contains("value=4B") && text.contains("value=12B"),
        "{text}"
    );

    // Explicit recreate: the pin is replaced, and the loader says which map lost its content.
    let options = DataplaneOptions {
        on_pin_mismatch: PinMismatch::Recreate,
        ..dir.options()
    };
    let dp = Dataplane::open(&options)?;
    assert_eq!(
        dp.recreated_maps()
            .iter()
            .map(|r| r.map)
            .collect::<Vec<_>>(),
        vec![maps::BACKENDS4]
    );
    drop(dp);

    // A different size is a different layout too.
    let bigger = DataplaneOptions {
        sizes: MapSizes {
            services: 2048,
            ..small_sizes()
        },
        ..dir.options()
    };
    let err = Dataplane::open(&bigger).expect_err("a resized map was reused");
    assert!(
        matches!(&err, DataplaneError::PinLayoutMismatch { map, .. } if *map == maps::SERVICES4),
        "{err}"
    );
    Ok(())
}

fn tcx_program_ids(ifname: &str, ty: TcAttachType) -> Result<Vec<u32>> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, ty)?;
    Ok(programs.iter().map(|p| p.id()).collect())
}

#[test]
fn attach_in_a_fresh_netns_replaces_instead_of_duplicating_and_cleanup_leaves_nothing() -> Result<()>
{
    if !require_root("attach_in_a_fresh_netns") || !have_object("attach_in_a_fresh_netns") {
        return Ok(());
    }
    sweep_leftovers();
    let dir = BpffsDir::new()?;
    let ns = TestNetns::new()?;
    ns.ip(&[
        "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p",
    ])?;
    ns.ip(&[
        "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p",
    ])?;
    for link in ["pod0", "pod0p", "ext0", "ext0p"] {
        ns.ip(&["link", "set", link, "up"])?;
    }
    let pods = vec!["pod0".to_string()];
    let externals = vec!["ext0".to_string()];

    ns.run(|| -> Result<()> {
        let mut first = Dataplane::open(&dir.options())?;
        let attached = first.attach(&pods, &externals)?;
        let mut seen: Vec<(String, Hook, bool)> = attached
            .iter()
            .map(|a| (a.ifname.clone(), a.hook, a.replaced))
            .collect();
        seen.sort_by_key(|(n, h, _)| (n.clone(), *h as u32));
        assert_eq!(
            seen,
            vec![
                ("ext0".into(), Hook::FromNet, false),
                ("ext0".into(), Hook::ToNet, false),
                ("pod0".into(), Hook::FromPod, false),
                ("pod0".into(), Hook::ToPod, false),
            ]
        );
        for a in &attached {
            ensure!(a.pinned_at.exists(), "{} not pinned", a.pinned_at.display());
            assert_eq!(
                tcx_program_ids(&a.ifname, attach_type(a.hook))?,
                vec![first.program_id(a.hook)?]
            );
        }
        ensure!(
            tcx_program_ids("pod0p", TcAttachType::Ingress)?.is_empty(),
            "peer must stay untouched"
        );

        // The process "exits": the pinned links keep the programs attached.
        let old_ids: Vec<u32> = Hook::TC
            .iter()
            .map(|h| first.program_id(*h))
            .collect::<Result<_, _>>()?;
        drop(first);
        assert_eq!(
            tcx_program_ids("pod0", TcAttachType::Ingress)?,
            vec![old_ids[0]]
        );

        // A new process loads new programs and re-attaches: the links are reused, the
        // programs replaced in place, never a second attachment.
        let mut second = Dataplane::open(&dir.options())?;
        let again = second.attach(&pods, &externals)?;
        ensure!(
            again.len() == 4 && again.iter().all(|a| a.replaced),
            "{again:?}"
        );
        for a in &again {
            let now = tcx_program_ids(&a.ifname, attach_type(a.hook))?;
            assert_eq!(
                now,
                vec![second.program_id(a.hook)?],
                "{} {:?}",
                a.ifname,
                a.hook
            );
            ensure!(!old_ids.contains(&now[0]), "program was not replaced");
        }
        drop(second);

        // An interface that disappears leaves a stale pin, removed by the next attach.
        Command::new("ip").args(["link", "del", "ext0"]).status()?;
        let mut third = Dataplane::open(&dir.options())?;
        let last = third.attach(&pods, &externals)?;
        ensure!(last.iter().all(|a| a.ifname == "pod0"), "{last:?}");
        let mut pins: Vec<String> = std::fs::read_dir(pin::links_dir(&dir.0))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        pins.sort();
        ensure!(
            pins.len() == 2 && pins.iter().all(|p| p.contains("-pod0-")),
            "{pins:?}"
        );
        drop(third);

        // cleanup: nothing attached, nothing pinned, no folder.
        let cleaned = cleanup(&dir.0)?;
        assert_eq!((cleaned.links, cleaned.maps), (2, maps::ALL.len()));
        ensure!(!dir.0.exists(), "{} still exists", dir.0.display());
        ensure!(tcx_program_ids("pod0", TcAttachType::Ingress)?.is_empty());
        ensure!(tcx_program_ids("pod0", TcAttachType::Egress)?.is_empty());
        Ok(())
    })??;
    Ok(())
}
