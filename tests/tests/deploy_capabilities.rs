//! The DaemonSet's capability set, checked against the kernel: the real `service-lb attach`
//! (load the programs, create and pin the maps, attach with TCX: what `run` does before it
//! syncs) runs as root with its capability bounding set cut down to exactly the
//! capabilities the DaemonSet adds, and succeeds; with any one of them removed, it fails.
//! So the set is enough, and each capability in it is needed. A second test runs the whole
//! daemon (`service-lb run --manifests`) under the same set until it has programmed a
//! Service into the maps.
//!
//! Everything happens in a fresh network namespace (a veth pair inside it) with a bpffs
//! folder of this run; both are removed afterwards.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use service_lb_tests::{
    netns::{run_prefix, sweep_leftovers, NetNs, BPFFS_ROOT},
    privileges::require_root,
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `capabilities.add` of the service-lb container, e.g. ["BPF", "NET_ADMIN"].
fn daemonset_capabilities() -> Result<Vec<String>> {
    let path = deploy_dir().join("daemonset.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let ds: DaemonSet = serde_saphyr::from_str(&text).context("daemonset.yaml")?;
    let container = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().find(|c| c.name == "service-lb"))
        .context("no service-lb container")?;
    let caps = container
        .security_context
        .and_then(|s| s.capabilities)
        .context("no capabilities")?;
    let drop = caps.drop.unwrap_or_default();
    if drop != ["ALL"] {
        bail!("the DaemonSet must drop ALL capabilities first, drops {drop:?}");
    }
    Ok(caps.add.unwrap_or_default())
}

/// A bpffs folder of this run, emptied with `service-lb cleanup` and removed on drop.
struct Pins {
    dir: PathBuf,
    binary: PathBuf,
    ns: PathBuf,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg(format!("--net={}", self.ns.display()))
            .arg(&self.binary)
            .args(["cleanup", "--bpffs"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `nsenter --net=<ns> setpriv ... --` with exactly `caps` in the bounding set, no
/// inheritable or ambient capabilities, and no_new_privs (as `allowPrivilegeEscalation:
/// false` gives): root, but only with the DaemonSet's capabilities.
fn confined(ns: &NetNs, caps: &[String]) -> Command {
    let bounding: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display()))
        .args([
            "setpriv",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--no-new-privs",
        ])
        .arg(format!("--bounding-set={bounding}"))
        .arg("--");
    cmd
}

/// `service-lb attach` in `ns`, as root with only `caps` (bounding set, no inheritable or
/// ambient capabilities, no_new_privs as allowPrivilegeEscalation: false gives).
fn attach_with(ns: &NetNs, binary: &Path, bpffs: &Path, caps: &[String]) -> Result<Output> {
    confined(ns, caps)
        .arg(binary)
        .args(["attach", "--pod-interfaces=slbcap*", "--bpffs"])
        .arg(bpffs)
        .output()
        .context("running nsenter setpriv service-lb attach")
}

/// The exit status, the command's error line and, for a verifier refusal, the verifier's
/// reason (the line before its statistics).
fn describe(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let error = lines
        .iter()
        .find(|l| l.starts_with("service-lb:"))
        .map(|l| l.chars().take(160).collect::<String>())
        .unwrap_or_default();
    let verifier = lines
        .iter()
        .position(|l| l.starts_with("verification time"))
        .and_then(|i| i.checked_sub(1))
        .map(|i| format!(" [verifier: {}]", lines[i]))
        .unwrap_or_default();
    format!("{}: {error}{verifier}", out.status)
}

#[test]
fn the_daemonsets_capabilities_are_enough_and_each_is_needed() -> Result<()> {
    if !require_root("deploy_capabilities") {
        return Ok(());
    }
    if !Path::new("/usr/bin/setpriv").exists() && !Path::new("/bin/setpriv").exists() {
        bail!("setpriv (util-linux) is missing: run `cargo xtask setup`");
    }
    if !Path::new(BPFFS_ROOT).join(".").exists() {
        bail!("{BPFFS_ROOT} is missing: run `cargo xtask setup`");
    }
    sweep_leftovers();
    let caps = daemonset_capabilities()?;
    assert!(!caps.is_empty());
    let binary = service_lb_tests::daemon::service_lb_binary()?;
    let prefix = run_prefix();
    let ns = NetNs::create(&format!("{prefix}-cap"))?;
    ns.ip(&[
        "link", "add", "slbcap0", "type", "veth", "peer", "name", "slbcap1",
    ])?;
    ns.ip(&["link", "set", "slbcap0", "up"])?;
    ns.ip(&["link", "set", "slbcap1", "up"])?;

    let mut cases = vec![(caps.clone(), None)];
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        cases.push((fewer, Some(missing.clone())));
    }
    let mut report = Vec::new();
    for (i, (set, missing)) in cases.into_iter().enumerate() {
        let pins = Pins {
            dir: Path::new(BPFFS_ROOT).join(format!("{prefix}-c{i}")),
            binary: binary.clone(),
            ns: ns.path(),
        };
        let out = attach_with(&ns, &binary, &pins.dir, &set)?;
        let ok = out.status.success();
        report.push(format!(
            "with {set:?}: {}",
            if ok {
                "attached".to_owned()
            } else {
                describe(&out)
            }
        ));
        match missing {
            None => {
                assert!(
                    ok,
                    "the DaemonSet's set {set:?} is not enough: {}",
                    describe(&out)
                );
                let attached = String::from_utf8_lossy(&out.stdout);
                assert!(
                    attached.contains("from_pod on slbcap0")
                        && attached.contains("to_pod on slbcap1"),
                    "{attached}"
                );
            }
            Some(cap) => assert!(
                !ok,
                "CAP_{cap} is in the DaemonSet but attach works without it: drop it"
            ),
        }
    }
    println!("{}", report.join("\n"));
    Ok(())
}

const MANIFEST: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.19.0.77
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.1.10]
  conditions: {ready: true}
";

/// A temporary file or folder of this run, removed on drop (success, failure or panic).
struct TempPath(std::path::PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills the daemon on drop (the test's own child, never anything else).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The whole daemon, not only `attach`: `service-lb run --manifests` under exactly the
/// DaemonSet's capabilities loads, attaches, watches the folder and the links, serves its
/// HTTP endpoints and programs the Service into the maps.
#[test]
fn the_daemon_runs_with_the_daemonsets_capabilities() -> Result<()> {
    if !require_root("deploy_capabilities_run") {
        return Ok(());
    }
    sweep_leftovers();
    let caps = daemonset_capabilities()?;
    let binary = service_lb_tests::daemon::service_lb_binary()?;
    let prefix = run_prefix();
    let ns = NetNs::create(&format!("{prefix}-run"))?;
    ns.ip(&[
        "link", "add", "slbcap0", "type", "veth", "peer", "name", "slbcap1",
    ])?;
    ns.ip(&["link", "set", "slbcap0", "up"])?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let pins = Pins {
        dir: Path::new(BPFFS_ROOT).join(format!("{prefix}-r")),
        binary: binary.clone(),
        ns: ns.path(),
    };
    let manifests = TempPath(std::env::temp_dir().join(format!("{prefix}-manifests")));
    let manifests = &manifests.0;
    std::fs::create_dir_all(manifests)?;
    std::fs::write(manifests.join("web.yaml"), MANIFEST)?;

    let log = TempPath(std::env::temp_dir().join(format!("{prefix}-run.log")));
    let log = &log.0;
    let daemon = confined(&ns, &caps)
        .arg(&binary)
        .args(["run", "--node-name=n1", "--pod-interfaces=slbcap*"])
        .args([
            "--metrics-addr=127.0.0.1:10249",
            "--health-addr=127.0.0.1:10256",
        ])
        .arg("--manifests")
        .arg(manifests)
        .arg("--bpffs")
        .arg(&pins.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting service-lb run")?;
    let mut daemon = Child(daemon);

    // Bounded wait: the Service shows up in the pinned maps (read by root with inspect).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut programmed = false;
    while std::time::Instant::now() < deadline {
        if let Some(status) = daemon.0.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("service-lb run exited with {status} under {caps:?}:\n{text}");
        }
        let out = Command::new(&binary)
            .args(["inspect", "services", "-o", "json", "--bpffs"])
            .arg(&pins.dir)
            .output()?;
        let json = String::from_utf8_lossy(&out.stdout);
        if out.status.success()
            && json.contains("198.19.0.77:80/tcp")
            && json.contains("198.18.1.10:8080")
        {
            programmed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let still_running = daemon.0.try_wait()?.is_none();
    drop(daemon);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        programmed,
        "the Service never reached the maps under {caps:?}; daemon log:\n{text}"
    );
    assert!(
        still_running,
        "the daemon exited under {caps:?}; log:\n{text}"
    );
    drop(pins);
    Ok(())
}
