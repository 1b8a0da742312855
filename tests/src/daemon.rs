//! Driving the real `service-lb run` binary on a test node.
//!
//! - [`service_lb_binary`]: the binary next to the running test (built when absent or
//!   older than the test);
//! - [`ManifestDir`] + [`ServiceManifest`]/[`SliceManifest`]: a manifests folder and the
//!   YAML written into it;
//! - [`Daemon`]: `service-lb run --manifests ...` started inside a node's network
//!   namespace (`setns()` before `exec`, never `ip netns exec`), killed on drop;
//!   HTTP GETs to its admin servers from a thread inside that namespace;
//! - [`frontends`]: the data plane's view (frontend -> backends) read from the pins.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use service_lb::dataplane::BpfMaps;

use crate::netns::NetNs;

/// Bound on one admin HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a graceful stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The `service-lb` binary of this build: `target/<profile>/service-lb`, found from the
/// running executable (a test in `deps/` or a binary like `slb-demo`). Built with
/// `cargo build -p service-lb --bin service-lb` when absent or older than a source file
/// of `service-lb/src`.
/// `SERVICE_LB_BIN` overrides.
pub fn service_lb_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("SERVICE_LB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().context("executable without a folder")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps without a parent")?;
    }
    let binary = dir.join("service-lb");
    let built = binary.metadata().and_then(|m| m.modified()).ok();
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../service-lb/src");
    if built.is_none_or(|built| newest_mtime(&sources).is_some_and(|src| src > built)) {
        build_binary(dir, &binary)?;
    }
    if !binary.exists() {
        bail!("{} does not exist and could not be built", binary.display());
    }
    Ok(binary)
}

/// The newest modification time of the files under `dir` (recursively).
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

fn build_binary(profile_dir: &Path, binary: &Path) -> Result<()> {
    let target_dir = profile_dir
        .parent()
        .context("profile folder without a parent")?;
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tests crate without a workspace")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .args([
            "build",
            "--quiet",
            "-p",
            "service-lb",
            "--bin",
            "service-lb",
        ]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() && !binary.exists() {
        bail!("cargo build -p service-lb failed ({status})");
    }
    Ok(())
}

/// A manifests folder owned by a test run, and a folder for the daemons' logs beside it
/// (a log inside the watched folder would wake the source at every line). Both are
/// removed on drop.
#[derive(Debug)]
pub struct ManifestDir {
    root: PathBuf,
    path: PathBuf,
}

impl ManifestDir {
    /// `/tmp/<prefix>-daemon/{manifests,logs}` (emptied if it exists).
    pub fn create(prefix: &str) -> Result<Self> {
        let root = std::env::temp_dir().join(format!("{prefix}-daemon"));
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("emptying {}", root.display()))?;
        }
        let path = root.join("manifests");
        for dir in [&path, &root.join("logs")] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self { root, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a daemon's log goes: `<root>/logs/<name>.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }

    /// Writes `file` as an editor does: a hidden temporary file, then a rename over it.
    pub fn write(&self, file: &str, content: &str) -> Result<()> {
        let tmp = self.path.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
        let target = self.path.join(file);
        std::fs::rename(&tmp, &target).with_context(|| format!("renaming to {}", target.display()))
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        let target = self.path.join(file);
        std::fs::remove_file(&target).with_context(|| format!("removing {}", target.display()))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!("warning: removing {}: {e}", self.root.display());
        }
    }
}

/// A Service port: name, port, protocol (`TCP`/`UDP`).
#[derive(Clone, Debug)]
pub struct PortSpec {
    pub name: String,
    pub port: u16,
    pub protocol: &'static str,
}

impl PortSpec {
    pub fn new(name: &str, port: u16, protocol: &'static str) -> Self {
        Self {
            name: name.to_owned(),
            port,
            protocol,
        }
    }
}

/// A ClusterIP Service.
#[derive(Clone, Debug)]
pub struct ServiceManifest {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// (port, targetPort) pairs share the name with the slice ports.
    pub ports: Vec<(PortSpec, u16)>,
}

impl ServiceManifest {
    pub fn yaml(&self) -> String {
        self.yaml_with(&ServiceExtras::default())
    }

    /// The manifest with `extras` (labels, sessionAffinity) added.
    pub fn yaml_with(&self, extras: &ServiceExtras) -> String {
        let families: Vec<&str> = self
            .cluster_ips
            .iter()
            .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
            .collect();
        let mut out = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\n",
            self.name, self.namespace,
        );
        if !extras.labels.is_empty() {
            out.push_str("  labels:\n");
            for (key, value) in &extras.labels {
                out.push_str(&format!("    {key}: \"{value}\"\n"));
            }
        }
        out.push_str(&format!(
            "spec:\n  type: ClusterIP\n  clusterIP: {}\n  clusterIPs: [{}]\n  ipFamilies: [{}]\n  ipFamilyPolicy: {}\n",
            self.cluster_ips.first().map_or_else(String::new, |ip| ip.to_string()),
            join(self.cluster_ips.iter().map(|ip| format!("\"{ip}\""))),
            families.join(", "),
            if families.len() > 1 { "RequireDualStack" } else { "SingleStack" },
        ));
        match extras.session_affinity {
            SessionAffinity::None => {}
            SessionAffinity::ClientIp { timeout_s: None } => {
                out.push_str("  sessionAffinity: ClientIP\n");
            }
            SessionAffinity::ClientIp {
                timeout_s: Some(timeout),
            } => out.push_str(&format!(
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {timeout}\n"
            )),
        }
        out.push_str("  ports:\n");
        for (port, target) in &self.ports {
            out.push_str(&format!(
                "  - name: {}\n    port: {}\n    targetPort: {target}\n    protocol: {}\n",
                port.name, port.port, port.protocol
            ));
        }
        out
    }
}

/// `spec.sessionAffinity` of a Service manifest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionAffinity {
    /// Not set (kube's default, `None`).
    #[default]
    None,
    /// `ClientIP`, with `sessionAffinityConfig.clientIP.timeoutSeconds` when `Some`
    /// (kube-proxy's default of 10800 s otherwise).
    ClientIp { timeout_s: Option<u32> },
}

/// What [`ServiceManifest::yaml_with`] adds to the plain manifest.
#[derive(Clone, Debug, Default)]
pub struct ServiceExtras {
    /// `metadata.labels` (e.g. `service.kubernetes.io/headless`).
    pub labels: Vec<(String, String)>,
    pub session_affinity: SessionAffinity,
}

/// One endpoint of a slice.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    pub addr: IpAddr,
    pub node: String,
    pub ready: bool,
    /// The pod is shutting down (still serving, as a terminating pod is until it exits).
    pub terminating: bool,
}

/// An EndpointSlice of one address family.
#[derive(Clone, Debug)]
pub struct SliceManifest {
    pub namespace: String,
    pub name: String,
    pub service: String,
    pub ipv6: bool,
    /// Name + backend port (+ protocol).
    pub ports: Vec<PortSpec>,
    pub endpoints: Vec<EndpointSpec>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`.
    pub trigger_time: Option<String>,
}

impl SliceManifest {
    pub fn yaml(&self) -> String {
        let mut out = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}\n  namespace: {}\n  labels:\n    kubernetes.io/service-name: {}\n",
            self.name, self.namespace, self.service
        );
        if let Some(t) = &self.trigger_time {
            out.push_str(&format!(
                "  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"{t}\"\n"
            ));
        }
        out.push_str(&format!(
            "addressType: {}\nports:\n",
            if self.ipv6 { "IPv6" } else { "IPv4" }
        ));
        for p in &self.ports {
            out.push_str(&format!(
                "- name: {}\n  port: {}\n  protocol: {}\n",
                p.name, p.port, p.protocol
            ));
        }
        if self.endpoints.is_empty() {
            out.push_str("endpoints: []\n");
        } else {
            out.push_str("endpoints:\n");
        }
        for e in &self.endpoints {
            out.push_str(&format!(
                "- addresses: [\"{}\"]\n  nodeName: {}\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n",
                e.addr, e.node, e.ready, e.ready || e.terminating, e.terminating
            ));
        }
        out
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// How to start a daemon on a node.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub bpffs: PathBuf,
    pub manifests: PathBuf,
    pub node_name: String,
    pub pod_interfaces: String,
    pub external_interfaces: String,
    /// Inside the node's namespace: its own loopback, so fixed ports do not collide.
    pub metrics_addr: SocketAddr,
    pub health_addr: SocketAddr,
    /// More flags (`--map-services-max=8`, ...).
    pub extra_args: Vec<String>,
    /// stdout + stderr of the daemon go here (appended: restarts share one log).
    pub log: PathBuf,
    /// The API source instead of the manifests folder: `--kubeconfig` this file.
    pub kubeconfig: Option<PathBuf>,
}

impl DaemonOptions {
    /// Defaults for a test node: `slbp*` pod veths, `slbu0` underlay, admin ports on
    /// the namespace's loopback, quick syncs.
    pub fn for_node(bpffs: &Path, manifests: &Path, node_name: &str, log: PathBuf) -> Self {
        Self {
            bpffs: bpffs.to_path_buf(),
            manifests: manifests.to_path_buf(),
            node_name: node_name.to_owned(),
            pod_interfaces: crate::topology::POD_VETH_GLOB.to_owned(),
            external_interfaces: crate::topology::UNDERLAY_DEV.to_owned(),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 10249)),
            health_addr: SocketAddr::from(([127, 0, 0, 1], 10256)),
            extra_args: vec![
                "--map-services-max=1024".into(),
                "--map-backends-max=1024".into(),
                "--map-revnat-max=256".into(),
                "--map-ct-tcp-max=16384".into(),
                "--map-ct-any-max=16384".into(),
                format!("--hairpin-ipv4={}", crate::topology::TEST_HAIRPIN_IPV4),
                format!("--hairpin-ipv6={}", crate::topology::TEST_HAIRPIN_IPV6),
            ],
            log,
            kubeconfig: None,
        }
    }
}

/// A `service-lb run` process inside a node's namespace. Killed (-9) on drop if it still
/// runs: the data plane stays, the node's bpffs guard removes it.
pub struct Daemon {
    child: Option<Child>,
    ns_path: PathBuf,
    pub options: DaemonOptions,
}

/// An admin HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

impl Daemon {
    pub fn start(ns: &NetNs, options: DaemonOptions) -> Result<Self> {
        Self::start_binary(ns, options, &service_lb_binary()?)
    }

    /// `start` with another `service-lb` binary (an earlier version, for upgrade tests).
    pub fn start_binary(ns: &NetNs, options: DaemonOptions, binary: &Path) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&options.log)
            .with_context(|| format!("opening {}", options.log.display()))?;
        let handle =
            File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
        let mut cmd = Command::new(binary);
        cmd.arg("run");
        match &options.kubeconfig {
            Some(kubeconfig) => cmd.arg("--kubeconfig").arg(kubeconfig),
            None => cmd.arg("--manifests").arg(&options.manifests),
        };
        cmd.arg("--bpffs")
            .arg(&options.bpffs)
            .arg("--node-name")
            .arg(&options.node_name)
            .arg("--pod-interfaces")
            .arg(&options.pod_interfaces)
            .arg("--external-interfaces")
            .arg(&options.external_interfaces)
            .arg("--metrics-addr")
            .arg(options.metrics_addr.to_string())
            .arg("--health-addr")
            .arg(options.health_addr.to_string())
            .args(&options.extra_args)
            .env_remove("SERVICE_LB_KUBECONFIG")
            .env(
                "RUST_LOG",
                std::env::var("SLB_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log handle")?)
            .stderr(log);
        let fd = handle.as_raw_fd();
        // SAFETY: between fork and exec only the setns syscall runs (async-signal-safe);
        // `handle` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        drop(handle);
        Ok(Self {
            child: Some(child),
            ns_path: ns.path(),
            options,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `None` while it runs, its exit status once it has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("waiting for the daemon"),
            None => bail!("the daemon was already reaped"),
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill().context("kill -9 the daemon")?;
        child.wait().context("reaping the daemon")?;
        Ok(())
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the daemon was already reaped");
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        kill(pid, Signal::SIGTERM).context("SIGTERM to the daemon")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the daemon did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path` from the health server.
    pub fn health(&self, path: &str) -> Result<HttpAnswer> {
        http_get(&self.ns_path, self.options.health_addr, path)
    }

    /// GET `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        let answer = http_get(&self.ns_path, self.options.metrics_addr, "/metrics")?;
        if answer.status != 200 {
            bail!("/metrics answered {}: {}", answer.status, answer.body);
        }
        Ok(answer.body)
    }

    /// Polls `/readyz` until 200; returns how long it took. Fails early if the daemon
    /// exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                bail!(
                    "the daemon exited ({status}) before it was ready; log:\n{}",
                    self.log_tail(40)
                );
            }
            if self.health("/readyz").is_ok_and(|a| a.status == 200) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("not ready within {timeout:?}; log:\n{}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.options.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET from a thread inside the namespace at `ns_path`.
pub fn http_get(ns_path: &Path, addr: SocketAddr, path: &str) -> Result<HttpAnswer> {
    let ns_path = ns_path.to_path_buf();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || -> Result<HttpAnswer> {
            let handle =
                File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
            setns(&handle, CloneFlags::CLONE_NEWNET).context("setns")?;
            let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
            stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
            stream.write_all(request.as_bytes())?;
            let mut raw = Vec::new();
            stream
                .take(16 << 20)
                .read_to_end(&mut raw)
                .context("reading the answer")?;
            parse_http(&String::from_utf8_lossy(&raw))
        });
        worker
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the HTTP thread panicked")))
    })
}

fn parse_http(raw: &str) -> Result<HttpAnswer> {
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok(HttpAnswer {
        status,
        body: body.to_owned(),
    })
}

/// Frontend (`vip:port/proto`) -> backends (`addr:port`) as the pinned maps hold them.
pub fn frontends(bpffs: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let maps = BpfMaps::open_pinned(bpffs)
        .with_context(|| format!("opening the maps pinned in {}", bpffs.display()))?;
    let rows = service_lb::cli::inspect::services::rows(&maps).context("reading the services")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut backends = r.backends;
            backends.sort();
            (r.frontend, backends)
        })
        .collect())
}

/// Every frontend row of the pinned maps (`service-lb inspect services`), with its
/// affinity timeout and flags.
pub fn frontend_rows(bpffs: &Path) -> Result<Vec<service_lb::cli::inspect::services::ServiceRow>> {
    let maps = BpfMaps::open_pinned(bpffs)
        .with_context(|| format!("opening the maps pinned in {}", bpffs.display()))?;
    service_lb::cli::inspect::services::rows(&maps).context("reading the services")
}

/// The key [`frontends`] uses: `vip:port/tcp`.
pub fn frontend_key(vip: SocketAddr, protocol: &str) -> String {
    format!("{vip}/{}", protocol.to_ascii_lowercase())
}

/// Polls the pinned maps in `bpffs` until `done` holds for the rows; returns how long it
/// took. Fails after `bound` with `what` and the last rows seen.
pub fn wait_for_rows(
    bpffs: &Path,
    what: &str,
    bound: Duration,
    done: impl Fn(&[service_lb::cli::inspect::services::ServiceRow]) -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let rows = frontend_rows(bpffs)?;
        if done(&rows) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > bound {
            let seen: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} affinity {} -> {:?}",
                        r.frontend, r.affinity_timeout_s, r.backends
                    )
                })
                .collect();
            bail!("{what}: not within {bound:?}; the maps hold {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until each `(frontend key, backends)` of `wanted` is in the pinned maps with
/// exactly those backends (any order); other frontends are not looked at.
pub fn wait_frontends(
    bpffs: &Path,
    wanted: &[(String, Vec<String>)],
    bound: Duration,
) -> Result<Duration> {
    let wanted: Vec<(String, Vec<String>)> = wanted
        .iter()
        .map(|(frontend, backends)| {
            let mut backends = backends.clone();
            backends.sort();
            (frontend.clone(), backends)
        })
        .collect();
    wait_for_rows(bpffs, &format!("frontends {wanted:?}"), bound, |rows| {
        wanted.iter().all(|(frontend, backends)| {
            rows.iter().any(|r| {
                let mut have = r.backends.clone();
                have.sort();
                r.frontend == *frontend && have == *backends
            })
        })
    })
}

/// Starts one daemon per node of `cluster`, all reading `manifests`, each with
/// [`DaemonOptions::for_node`] plus `extra_args`, and waits until every one is ready.
/// The daemons are returned in node order; drop them before the cluster.
pub fn start_per_node(
    cluster: &crate::topology::Cluster,
    manifests: &ManifestDir,
    extra_args: &[String],
    ready_bound: Duration,
) -> Result<Vec<Daemon>> {
    let mut daemons = Vec::new();
    for node in &cluster.nodes {
        let mut options = DaemonOptions::for_node(
            node.bpffs.path(),
            manifests.path(),
            &node.name,
            manifests.log_path(&node.name),
        );
        options.extra_args.extend(extra_args.iter().cloned());
        daemons.push(
            Daemon::start(&node.ns, options)
                .with_context(|| format!("starting the daemon of node {}", node.name))?,
        );
    }
    for (node, daemon) in cluster.nodes.iter().zip(daemons.iter_mut()) {
        let ready = daemon
            .wait_ready(ready_bound)
            .with_context(|| format!("the daemon of node {}", node.name))?;
        eprintln!("daemon of node {} ready after {ready:?}", node.name);
    }
    Ok(daemons)
}

/// A dual-stack Service with one port and one endpoint, as the end-to-end tests that
/// exercise a single backend publish it.
pub struct OneBackendService<'a> {
    pub name: &'a str,
    /// The IPv4 and the IPv6 ClusterIP.
    pub vips: [IpAddr; 2],
    pub port_name: &'a str,
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    pub backend: &'a crate::topology::Pod,
    pub backend_port: u16,
}

/// Writes `service` and its two EndpointSlices (one per family) into `manifests`, starts
/// one daemon per node (see [`start_per_node`]) and waits until every node's maps hold
/// both frontends with the backend.
pub fn serve_one_backend(
    cluster: &crate::topology::Cluster,
    manifests: &ManifestDir,
    service: &OneBackendService,
    extra_args: &[String],
    ready_bound: Duration,
    change_bound: Duration,
) -> Result<Vec<Daemon>> {
    let backend = service.backend;
    let manifest = ServiceManifest {
        namespace: "default".into(),
        name: service.name.into(),
        cluster_ips: service.vips.to_vec(),
        ports: vec![(
            PortSpec::new(service.port_name, service.port, service.protocol),
            service.backend_port,
        )],
    };
    manifests.write(&format!("{}-service.yaml", service.name), &manifest.yaml())?;
    let slices: Vec<String> = [false, true]
        .into_iter()
        .map(|v6| {
            SliceManifest {
                namespace: "default".into(),
                name: format!("{}-{}", service.name, if v6 { "v6" } else { "v4" }),
                service: service.name.into(),
                ipv6: v6,
                ports: vec![PortSpec::new(
                    service.port_name,
                    service.backend_port,
                    service.protocol,
                )],
                endpoints: vec![EndpointSpec {
                    addr: backend.addr(v6),
                    node: format!("n{}", backend.node),
                    ready: true,
                    terminating: false,
                }],
                trigger_time: None,
            }
            .yaml()
        })
        .collect();
    manifests.write(
        &format!("{}-slices.yaml", service.name),
        &slices.join("---\n"),
    )?;
    let daemons = start_per_node(cluster, manifests, extra_args, ready_bound)?;
    let wanted: Vec<(String, Vec<String>)> = service
        .vips
        .iter()
        .map(|vip| {
            (
                frontend_key(SocketAddr::new(*vip, service.port), service.protocol),
                vec![
                    SocketAddr::new(backend.addr(vip.is_ipv6()), service.backend_port).to_string(),
                ],
            )
        })
        .collect();
    for node in &cluster.nodes {
        let took = wait_frontends(node.bpffs.path(), &wanted, change_bound)?;
        eprintln!("node {}: the Service in the maps after {took:?}", node.name);
    }
    Ok(daemons)
}

/// Parses Prometheus text samples: `name{labels}` -> value.
pub fn metric_samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every sample of `name` (any labels) whose label text contains every `with`.
pub fn metric_sum(samples: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let base = series.split('{').next().unwrap_or_default();
            base == name && with.iter().all(|w| series.contains(w))
        })
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_parse() -> Result<()> {
        let a = parse_http("HTTP/1.0 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno")?;
        assert_eq!(a.status, 503);
        assert_eq!(a.body, "no");
        assert!(parse_http("garbage").is_err());
        Ok(())
    }

    #[test]
    fn metric_sums_filter_by_name_and_labels() {
        let s = metric_samples(
            "# TYPE x counter\nx_total{kind=\"a\",reason=\"r\"} 2\nx_total{kind=\"b\",reason=\"r\"} 3\nx_totally 9\n",
        );
        assert_eq!(metric_sum(&s, "x_total", &[]), 5.0);
        assert_eq!(metric_sum(&s, "x_total", &["kind=\"b\""]), 3.0);
    }

    #[test]
    fn manifests_render_the_fields_the_model_reads() {
        let svc = ServiceManifest {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ips: vec![
                "198.19.0.10".parse().expect("ip"),
                "fd00:19::10".parse().expect("ip"),
            ],
            ports: vec![(PortSpec::new("http", 80, "TCP"), 8080)],
        };
        let yaml = svc.yaml();
        assert!(
            yaml.contains("clusterIPs: [\"198.19.0.10\", \"fd00:19::10\"]"),
            "{yaml}"
        );
        assert!(yaml.contains("ipFamilyPolicy: RequireDualStack"), "{yaml}");
        assert!(
            !yaml.contains("labels:") && !yaml.contains("sessionAffinity"),
            "{yaml}"
        );
        let extras = ServiceExtras {
            labels: vec![("service.kubernetes.io/headless".into(), String::new())],
            session_affinity: SessionAffinity::ClientIp { timeout_s: Some(7) },
        };
        let with = svc.yaml_with(&extras);
        assert!(
            with.contains("metadata:\n  name: web\n  namespace: default\n  labels:\n    service.kubernetes.io/headless: \"\"\nspec:\n"),
            "{with}"
        );
        assert!(
            with.contains("  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 7\n  ports:\n"),
            "{with}"
        );
        let default_timeout = svc.yaml_with(&ServiceExtras {
            session_affinity: SessionAffinity::ClientIp { timeout_s: None },
            ..ServiceExtras::default()
        });
        assert!(
            default_timeout.contains("  sessionAffinity: ClientIP\n  ports:\n"),
            "{default_timeout}"
        );
        let slice = SliceManifest {
            namespace: "default".into(),
            name: "web-v4".into(),
            service: "web".into(),
            ipv6: false,
            ports: vec![PortSpec::new("http", 8080, "TCP")],
            endpoints: vec![EndpointSpec {
                addr: "198.18.1.11".parse().expect("ip"),
                node: "n1".into(),
                ready: true,
                terminating: false,
            }],
            trigger_time: Some("2024-01-01T00:00:00Z".into()),
        };
        let yaml = slice.yaml();
        assert!(yaml.contains("kubernetes.io/service-name: web"), "{yaml}");
        assert!(yaml.contains("addressType: IPv4"), "{yaml}");
        assert!(yaml.contains("- addresses: [\"198.18.1.11\"]"), "{yaml}");
    }
}
