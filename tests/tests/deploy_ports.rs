//! Installing alongside kube-proxy: the daemon's default ports do not clash with
//! kube-proxy's (10249 metrics, 10256 health), its listeners answer on IPv4 and IPv6, and
//! a port that kube-proxy holds makes it exit at once with one sentence that says so.
//!
//! Everything runs in a test node's network namespace: stand-ins for kube-proxy's
//! listeners are bound there first, then the real `service-lb run --manifests` binary is
//! started there (`setns()` before `exec`), with the node's own bpffs folder.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use service_lb::cli::run::{DEFAULT_HEALTH_ADDR, DEFAULT_METRICS_ADDR};
use service_lb_tests::daemon::{http_get, service_lb_binary, ManifestDir};
use service_lb_tests::netns::{run_in, sweep_leftovers, NetNs};
use service_lb_tests::privileges::require_root;
use service_lb_tests::topology::{Cluster, ClusterSpec, Node, POD_VETH_GLOB, UNDERLAY_DEV};

/// kube-proxy's ports, written out here rather than taken from the code under test.
const KUBE_PROXY_METRICS: u16 = 10249;
const KUBE_PROXY_HEALTH: u16 = 10256;
const READY_BOUND: Duration = Duration::from_secs(30);
const EXIT_BOUND: Duration = Duration::from_secs(10);

/// What kube-proxy binds by default (`--metrics-bind-address` is 127.0.0.1:10249 in
/// kube-proxy's own defaults, 0.0.0.0:10249 in kubeadm's configuration; the health
/// server 0.0.0.0:10256): the widest of each, held inside the node's namespace.
fn hold_kube_proxys_ports(ns: &NetNs) -> Result<Vec<TcpListener>> {
    run_in(ns, || {
        [KUBE_PROXY_METRICS, KUBE_PROXY_HEALTH]
            .into_iter()
            .map(|port| {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                    .with_context(|| format!("holding 0.0.0.0:{port} like kube-proxy"))
            })
            .collect()
    })
}

/// `service-lb run` inside `ns` with the node's bpffs and pod interfaces, plus `extra`.
fn spawn_run(ns: &NetNs, node: &Node, manifests: &Path, extra: &[&str]) -> Result<Child> {
    let binary = service_lb_binary()?;
    let handle =
        File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
    let mut cmd = Command::new(&binary);
    cmd.arg("run")
        .arg("--manifests")
        .arg(manifests)
        .arg("--bpffs")
        .arg(node.bpffs.path())
        .args(["--node-name", "n1", "--pod-interfaces", POD_VETH_GLOB])
        .args(["--external-interfaces", UNDERLAY_DEV])
        .args([
            "--map-services-max=64",
            "--map-backends-max=64",
            "--map-revnat-max=64",
        ])
        .args(["--map-ct-tcp-max=1024", "--map-ct-any-max=1024"])
        .args(extra)
        .env_remove("SERVICE_LB_METRICS_ADDR")
        .env_remove("SERVICE_LB_HEALTH_ADDR")
        .env_remove("SERVICE_LB_KUBECONFIG")
        .env_remove("SERVICE_LB_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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
    Ok(child)
}

/// Waits (bounded) for `child` to exit by itself; kills it past the bound.
fn wait_exit(mut child: Child, bound: Duration) -> Result<Output> {
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "still running after {bound:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

struct Fixture {
    _held: Vec<TcpListener>,
    manifests: ManifestDir,
    cluster: Cluster,
}

impl Fixture {
    fn new() -> Result<Self> {
        sweep_leftovers();
        let cluster = Cluster::new(&ClusterSpec::new(&[&["client"]]))?;
        let manifests = ManifestDir::create(cluster.prefix())?;
        let node = cluster.node(1)?;
        node.ns.ip(&["link", "set", "lo", "up"])?;
        let held = hold_kube_proxys_ports(&node.ns)?;
        Ok(Self {
            _held: held,
            manifests,
            cluster,
        })
    }
}

#[test]
fn the_default_ports_work_while_kube_proxy_holds_its_own_on_both_families() -> Result<()> {
    if !require_root("deploy_ports") {
        return Ok(());
    }
    let fixture = Fixture::new()?;
    let node = fixture.cluster.node(1)?;
    let metrics: SocketAddr = DEFAULT_METRICS_ADDR.parse()?;
    let health: SocketAddr = DEFAULT_HEALTH_ADDR.parse()?;
    assert!(
        ![KUBE_PROXY_METRICS, KUBE_PROXY_HEALTH].contains(&metrics.port())
            && ![KUBE_PROXY_METRICS, KUBE_PROXY_HEALTH].contains(&health.port()),
        "defaults {metrics} / {health} clash with kube-proxy's"
    );
    // No address flag: the defaults.
    let mut child = spawn_run(&node.ns, node, fixture.manifests.path(), &[])?;
    let started = Instant::now();
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, health.port()));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, health.port()));
    let result = (|| -> Result<()> {
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("the daemon exited ({status}) next to kube-proxy's listeners");
            }
            if http_get(&node.ns.path(), v4, "/readyz").is_ok_and(|a| a.status == 200) {
                break;
            }
            if started.elapsed() > READY_BOUND {
                bail!("not ready on {v4} within {READY_BOUND:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("ready on the default ports after {:?}", started.elapsed());
        for addr in [v4, v6] {
            let answer = http_get(&node.ns.path(), addr, "/healthz")?;
            assert_eq!(answer.status, 200, "/healthz on {addr}: {}", answer.body);
            assert!(answer.body.contains("lastUpdated"), "{}", answer.body);
        }
        for ip in [
            std::net::IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let addr = SocketAddr::new(ip, metrics.port());
            let answer = http_get(&node.ns.path(), addr, "/metrics")?;
            assert_eq!(answer.status, 200, "/metrics on {addr}");
            assert!(answer.body.contains("service_lb_"), "/metrics on {addr}");
        }
        Ok(())
    })();
    let _ = child.kill();
    let out = child.wait_with_output()?;
    if result.is_err() {
        eprintln!("daemon stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    result
}

#[test]
fn a_port_kube_proxy_holds_is_one_clear_sentence_and_a_quick_exit() -> Result<()> {
    if !require_root("deploy_ports") {
        return Ok(());
    }
    let fixture = Fixture::new()?;
    let node = fixture.cluster.node(1)?;
    let cases: [(&[&str], &str, u16); 3] = [
        (
            &["--health-addr", "0.0.0.0:10256"],
            "health",
            KUBE_PROXY_HEALTH,
        ),
        // A dual-stack [::] socket clashes with kube-proxy's 0.0.0.0 one too.
        (
            &["--health-addr", "[::]:10256"],
            "health",
            KUBE_PROXY_HEALTH,
        ),
        (
            &["--metrics-addr", "[::]:10249"],
            "metrics",
            KUBE_PROXY_METRICS,
        ),
    ];
    for (flags, what, port) in cases {
        let child = spawn_run(&node.ns, node, fixture.manifests.path(), flags)?;
        let out = wait_exit(child, EXIT_BOUND)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{flags:?}: {}\n{stderr}", out.status);
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("service-lb: "))
            .collect();
        assert_eq!(errors.len(), 1, "one error line: {stderr}");
        let line = errors[0];
        for expected in [
            format!("cannot listen for {what} on "),
            format!(":{port}"),
            "in use".to_owned(),
            "kube-proxy".to_owned(),
            "deploy/README.md".to_owned(),
        ] {
            assert!(line.contains(&expected), "{expected:?} missing in: {line}");
        }
        // Nothing was loaded: the bind comes first.
        let pinned = std::fs::read_dir(node.bpffs.path())?.count();
        assert_eq!(
            pinned, 0,
            "the data plane was touched before the ports were bound"
        );
    }
    Ok(())
}
