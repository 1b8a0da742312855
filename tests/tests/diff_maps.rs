//! `service-lb diff` end to end: the real binary against maps pinned in a bpffs folder of
//! this test, with the desired state from a manifests folder and from the fake API server.
//!
//! The maps are written the daemon's way (the source's list -> model -> `Syncer`), then
//! `diff` must exit 0; drift is then injected by writing map entries directly (an extra
//! frontend, a backend gone from the slots, a slot pointing elsewhere) and `diff` must exit
//! 1 and name each change on its Service's line; an unusable `--bpffs` exits 2.
//!
//! Needs root (bpffs). Nothing is attached and no packet is sent: the maps are only pinned
//! (`/sys/fs/bpf/slb-diff-<pid>-<n>`, removed by a guard; leftovers of dead runs swept).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use service_lb::{
    cli::diff::{desired_from, SourceChoice},
    dataplane::{
        cleanup, pin, BpfMaps, Dataplane, DataplaneOptions, Family, MapSizes, MapStore,
        ServiceWriter, SvcKey, Syncer,
    },
};
use service_lb_common::{service::SVC_FLAG_CLUSTER_IP, SvcName, SvcValue};
use service_lb_tests::{
    daemon::service_lb_binary, fake_apiserver::FakeApiServer, privileges::require_root,
};

const PREFIX: &str = "slb-diff-";
const BPFFS_ROOT: &str = "/sys/fs/bpf";
const NODE: &str = "n1";
const WAIT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Two Services: web (two backends, one on this node) and dns (UDP, one backend).
const WEB: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 198.19.0.10
  clusterIPs: [198.19.0.10]
  ports:
  - name: http
    port: 80
    targetPort: 8080
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [198.18.1.2]
  nodeName: n1
  conditions: {ready: true, serving: true, terminating: false}
- addresses: [198.18.2.3]
  nodeName: n2
  conditions: {ready: true, serving: true, terminating: false}
";

const DNS: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: kube-system
spec:
  clusterIP: 198.19.0.53
  clusterIPs: [198.19.0.53]
  ports:
  - name: dns
    port: 53
    targetPort: 53
    protocol: UDP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: kube-system
  labels:
    kubernetes.io/service-name: dns
addressType: IPv4
ports:
- name: dns
  port: 53
  protocol: UDP
endpoints:
- addresses: [198.18.2.9]
  nodeName: n2
  conditions: {ready: true, serving: true, terminating: false}
";

/// A pinned data plane of this test; unpinned on drop.
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
                services: 1024,
                backends: 512,
                revnat: 512,
                ct_tcp: 1024,
                ct_any: 1024,
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Writes the maps the daemon would write for `source`.
fn program(pinned: &Pinned, source: SourceChoice) -> Result<()> {
    let desired = runtime()?.block_on(desired_from(source, NODE, WAIT))?;
    ensure!(desired.len() == 2, "{desired:?}");
    let mut syncer = Syncer::new(ServiceWriter::open(pinned.maps()?)?);
    let report = syncer.full_sync(&desired);
    ensure!(
        report.failed.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
    Ok(())
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

fn diff(args: &[&str]) -> Result<Ran> {
    let out = Command::new(service_lb_binary()?)
        .arg("diff")
        .args(args)
        .env_remove("SERVICE_LB_KUBECONFIG")
        .env_remove("KUBECONFIG")
        .output()
        .context("running service-lb diff")?;
    Ok(Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn master(vip: &str, port: u16, proto: u8) -> SvcKey {
    SvcKey::new(vip.parse().expect("vip"), port, proto, 0, 0)
}

/// Drift written straight into the maps: an extra frontend (named in the names map), the
/// web frontend down to one slot (its second backend missing), the dns slot pointing at
/// web's backend.
fn inject_drift(maps: &mut BpfMaps) -> Result<()> {
    let extra = master("198.19.0.99", 99, 6);
    maps.put_service(&extra, &SvcValue::master(0, 9999, SVC_FLAG_CLUSTER_IP, 0))?;
    maps.put_name(9999, &SvcName::new("old", "gone", "", 1))?;

    let web = master("198.19.0.10", 80, 6);
    let mut value = maps.get_service(&web)?.context("web master")?;
    let web_slot1 = maps.get_service(&web.with_slot(1))?.context("web slot 1")?;
    value.count = 1;
    maps.put_service(&web, &value)?;

    let dns = master("198.19.0.53", 53, 17);
    let dns_master = maps.get_service(&dns)?.context("dns master")?;
    maps.put_service(
        &dns.with_slot(1),
        &SvcValue::slot(web_slot1.backend_id, dns_master.service_id),
    )?;
    Ok(())
}

fn check_drift(ran: &Ran, wanted_args: &str) -> Result<()> {
    ensure!(
        ran.code == 1,
        "{wanted_args}: exit {} (stdout {} stderr {})",
        ran.code,
        ran.stdout,
        ran.stderr
    );
    let rows: serde_json::Value = serde_json::from_str(&ran.stdout)
        .with_context(|| format!("diff -o json printed {}", ran.stdout))?;
    let rows = rows.as_array().context("an array")?;
    let line = |service: &str| {
        rows.iter()
            .find(|r| r["service"] == service)
            .cloned()
            .unwrap_or_default()
    };
    let extra = line("old/gone");
    ensure!(extra["change"] == "extra", "{rows:?}");
    ensure!(extra["frontend"] == "198.19.0.99:99/tcp", "{rows:?}");
    let web = line("default/web");
    ensure!(web["change"] == "different", "{rows:?}");
    // Which of the two backends slot 1 held is up to the writer; the other is missing.
    let web_details = web["details"].to_string();
    ensure!(
        web_details.contains("missing") && !web_details.contains("extra"),
        "{web_details}"
    );
    let dns = line("kube-system/dns");
    ensure!(dns["change"] == "different", "{rows:?}");
    let dns_details = dns["details"].to_string();
    ensure!(
        dns_details.contains("backend 198.18.2.9:53 active missing")
            && dns_details.contains("extra"),
        "{dns_details}"
    );
    ensure!(rows.len() == 3, "{rows:?}");
    Ok(())
}

#[test]
fn diff_against_a_manifests_folder() -> Result<()> {
    if !require_root("diff_maps") {
        return Ok(());
    }
    let pinned = Pinned::new()?;
    let folder = tempfile::tempdir()?;
    std::fs::write(folder.path().join("web.yaml"), WEB)?;
    std::fs::write(folder.path().join("dns.yaml"), DNS)?;
    program(&pinned, SourceChoice::Manifests(folder.path().to_owned()))?;

    let manifests = folder.path().to_str().context("utf-8 path")?;
    let bpffs = pinned.0.to_str().context("utf-8 path")?;
    let base = ["--manifests", manifests, "--node", NODE, "--bpffs", bpffs];

    let equal = diff(&base)?;
    eprintln!("diff (equal):\n{}{}", equal.stdout, equal.stderr);
    ensure!(
        equal.code == 0,
        "exit {}: {}{}",
        equal.code,
        equal.stdout,
        equal.stderr
    );
    ensure!(
        equal.stdout.starts_with("equal: 2 Service(s)"),
        "{}",
        equal.stdout
    );

    // Another node's view: web's backend 198.18.1.2 is not local there.
    let other = diff(&["--manifests", manifests, "--node", "n2", "--bpffs", bpffs])?;
    ensure!(other.code == 1, "exit {}: {}", other.code, other.stdout);
    ensure!(other.stdout.contains("198.18.1.2:8080"), "{}", other.stdout);

    inject_drift(&mut pinned.maps()?)?;
    let table = diff(&base)?;
    eprintln!("diff (drifted):\n{}", table.stdout);
    ensure!(table.code == 1, "exit {}: {}", table.code, table.stderr);
    for word in [
        "old/gone",
        "default/web",
        "kube-system/dns",
        "extra",
        "different",
    ] {
        ensure!(
            table.stdout.contains(word),
            "{word} not in\n{}",
            table.stdout
        );
    }
    let json = diff(&[&base[..], &["-o", "json"]].concat())?;
    check_drift(&json, "manifests")?;

    // Errors exit 2.
    let missing = diff(&[
        "--manifests",
        manifests,
        "--node",
        NODE,
        "--bpffs",
        "/nonexistent/slb",
    ])?;
    ensure!(
        missing.code == 2,
        "exit {}: {}",
        missing.code,
        missing.stderr
    );
    ensure!(
        missing.stderr.contains("no data plane is pinned"),
        "{}",
        missing.stderr
    );
    Ok(())
}

#[test]
fn diff_against_the_api() -> Result<()> {
    if !require_root("diff_maps") {
        return Ok(());
    }
    let pinned = Pinned::new()?;
    let rt = runtime()?;
    let server = rt.block_on(FakeApiServer::start())?;
    for doc in [WEB, DNS] {
        for part in doc.split("\n---\n") {
            if part.contains("kind: Service\n") {
                let svc: Service = serde_saphyr::from_str(part)?;
                server.apply(&svc)?;
            } else {
                let slice: EndpointSlice = serde_saphyr::from_str(part)?;
                server.apply(&slice)?;
            }
        }
    }
    let dir = tempfile::tempdir()?;
    let kubeconfig = server.write_kubeconfig(dir.path())?;
    program(&pinned, SourceChoice::Kube(Some(kubeconfig.clone())))?;

    let kubeconfig = kubeconfig.to_str().context("utf-8 path")?;
    let bpffs = pinned.0.to_str().context("utf-8 path")?;
    let base = ["--kubeconfig", kubeconfig, "--node", NODE, "--bpffs", bpffs];
    // The server runs on this runtime's worker threads while this thread waits for the
    // binary.
    let equal = diff(&base)?;
    ensure!(
        equal.code == 0,
        "exit {}: {}{}",
        equal.code,
        equal.stdout,
        equal.stderr
    );

    inject_drift(&mut pinned.maps()?)?;
    let json = diff(&[&base[..], &["-o", "json"]].concat())?;
    check_drift(&json, "api")?;
    // Both families were read (nothing was written to IPv6: no row names it).
    ensure!(pinned.maps()?.list_services(Family::V6)?.is_empty());
    drop(server);
    Ok(())
}
