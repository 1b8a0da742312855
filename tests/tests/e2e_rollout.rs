//! End to end with the real daemon (`service-lb run --manifests`): a rolling replacement of
//! every backend of a Service under continuous load, as a Deployment rollout does it, and
//! the time a connected UDP client needs to reach a live backend once its own left.
//!
//! kube-proxy's behaviour is the spec: an endpoint that stops being eligible for new
//! connections (terminating, then gone from the slice) keeps its established TCP
//! connections (TCP conntrack is never flushed); new connections go only to eligible
//! endpoints and never fail while one is left; the UDP flows of an endpoint that stops
//! serving are flushed, so a client socket that keeps sending reaches a live backend.
//!
//! One node, pods `client`, `old1`, `old2`, `new1`, `new2`, `u1`, `u2`, `u3`; Service `web`
//! 198.19.0.10 / fd00:19::10, 80/TCP -> 8080 and 53/UDP -> 5353; Service `dns`
//! 198.19.0.20, 53/UDP -> 5353 over u1..u3. Timings are printed (MEASURED lines, with the
//! 200 ms target of the UDP re-route next to them), never asserted: only that the re-route
//! happens at all (within a generous 5 s) is.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use service_lb_tests::daemon::{
    Daemon, DaemonOptions, EndpointSpec, ManifestDir, PortSpec, ServiceManifest, SliceManifest,
};
use service_lb_tests::netns::{run_in, sweep_leftovers};
use service_lb_tests::privileges::require_root;
use service_lb_tests::servers::{tcp_ask, udp_ask, HeldConnection, Servers, UdpClient};
use service_lb_tests::topology::{Cluster, ClusterSpec};

const WEB4: &str = "198.19.0.10";
const WEB6: &str = "fd00:19::10";
const DNS4: &str = "198.19.0.20";
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
const UDP_PORT: u16 = 53;
const UDP_TARGET: u16 = 5353;
const READY_BOUND: Duration = Duration::from_secs(30);
/// Time each rollout step is given before the next one (load runs throughout).
const STEP: Duration = Duration::from_millis(700);
/// Held connections per family, opened before the rollout.
const HELD_PER_FAMILY: usize = 6;
/// Repetitions of the UDP re-route measurement.
const REROUTES: usize = 12;
/// The target for the UDP re-route (printed next to the measurement, not asserted).
const REROUTE_TARGET: Duration = Duration::from_millis(200);

const PODS: [&str; 8] = ["client", "old1", "old2", "new1", "new2", "u1", "u2", "u3"];

/// An endpoint's conditions in one step of the rollout.
#[derive(Clone, Copy)]
enum Phase {
    Ready,
    /// Shutting down: not ready, still serving, terminating.
    Terminating,
}

struct Fixture {
    // Field order = drop order: the daemon dies before the maps and namespaces go.
    daemon: Option<Daemon>,
    _servers: Vec<Servers>,
    manifests: ManifestDir,
    cluster: Cluster,
}

impl Fixture {
    fn new() -> Result<Self> {
        sweep_leftovers();
        let cluster = Cluster::new(&ClusterSpec::new(&[&PODS])).context("building the topology")?;
        let manifests = ManifestDir::create(cluster.prefix())?;
        let mut servers = Vec::new();
        for name in &PODS[1..] {
            let pod = cluster.pod(name)?;
            servers.push(Servers::start(
                &pod.ns,
                name,
                &[sa(pod.v4.into(), TCP_TARGET), sa(pod.v6.into(), TCP_TARGET)],
                &[sa(pod.v4.into(), UDP_TARGET), sa(pod.v6.into(), UDP_TARGET)],
            )?);
        }
        Ok(Self {
            daemon: None,
            _servers: servers,
            manifests,
            cluster,
        })
    }

    fn start(&mut self) -> Result<()> {
        let node = self.cluster.node(1)?;
        let log = self.manifests.log_path("n1");
        let options = DaemonOptions::for_node(node.bpffs.path(), self.manifests.path(), "n1", log);
        let mut daemon = Daemon::start(&node.ns, options)?;
        daemon.wait_ready(READY_BOUND)?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Writes the slices of `service` (both families unless `v4_only`) with `endpoints`.
    fn write_slices(
        &self,
        service: &str,
        v4_only: bool,
        endpoints: &[(&str, Phase)],
    ) -> Result<()> {
        let families: &[bool] = if v4_only { &[false] } else { &[false, true] };
        let mut docs = Vec::new();
        for &v6 in families {
            let endpoints = endpoints
                .iter()
                .map(|(name, phase)| {
                    Ok(EndpointSpec {
                        addr: self.cluster.pod(name)?.addr(v6),
                        node: "n1".into(),
                        ready: matches!(phase, Phase::Ready),
                        terminating: matches!(phase, Phase::Terminating),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let slice = SliceManifest {
                namespace: "default".into(),
                name: format!("{service}-{}", if v6 { "v6" } else { "v4" }),
                service: service.into(),
                ipv6: v6,
                ports: vec![
                    PortSpec::new("http", TCP_TARGET, "TCP"),
                    PortSpec::new("dns", UDP_TARGET, "UDP"),
                ],
                endpoints,
                trigger_time: None,
            };
            docs.push(slice.yaml());
        }
        self.manifests
            .write(&format!("{service}-slices.yaml"), &docs.join("---\n"))
    }

    fn write_services(&self) -> Result<()> {
        let web = ServiceManifest {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ips: vec![ip(WEB4), ip(WEB6)],
            ports: vec![
                (PortSpec::new("http", TCP_PORT, "TCP"), TCP_TARGET),
                (PortSpec::new("dns", UDP_PORT, "UDP"), UDP_TARGET),
            ],
        };
        let dns = ServiceManifest {
            namespace: "default".into(),
            name: "dns".into(),
            cluster_ips: vec![ip(DNS4)],
            ports: vec![(PortSpec::new("dns", UDP_PORT, "UDP"), UDP_TARGET)],
        };
        self.manifests.write("web-service.yaml", &web.yaml())?;
        self.manifests.write("dns-service.yaml", &dns.yaml())
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a literal address")
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// What the load threads saw.
#[derive(Default)]
struct Load {
    new_ok: AtomicU64,
    new_failed: AtomicU64,
    pings_ok: AtomicU64,
    pings_failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Answers to new connections per backend, after the last step.
    final_spread: Mutex<BTreeMap<String, u64>>,
}

impl Load {
    fn failed(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(what);
        }
    }
}

#[test]
fn e2e_rollout_under_load_and_udp_reroute() -> Result<()> {
    if !require_root("e2e_rollout_under_load_and_udp_reroute") {
        return Ok(());
    }
    let mut f = Fixture::new()?;
    f.write_services()?;
    f.write_slices(
        "web",
        false,
        &[("old1", Phase::Ready), ("old2", Phase::Ready)],
    )?;
    f.write_slices(
        "dns",
        true,
        &[
            ("u1", Phase::Ready),
            ("u2", Phase::Ready),
            ("u3", Phase::Ready),
        ],
    )?;
    f.start()?;
    rolling_update(&f)?;
    udp_reroute(&f)?;
    let daemon = f.daemon.as_mut().context("daemon")?;
    if let Some(status) = daemon.exited()? {
        bail!(
            "the daemon exited ({status}); log:\n{}",
            daemon.log_tail(40)
        );
    }
    Ok(())
}

/// old1+old2 -> old1+old2+new1 -> old1 terminating -> old1 gone, new2 added ->
/// old2 terminating -> old2 gone; long-lived streams to old1/old2 and new connections
/// (TCP and UDP, both families) all along.
fn rolling_update(f: &Fixture) -> Result<()> {
    use Phase::{Ready, Terminating};
    let client_ns = &f.cluster.pod("client")?.ns;
    let vips = [ip(WEB4), ip(WEB6)];
    let mut held: Vec<HeldConnection> = Vec::new();
    run_in(client_ns, || {
        for vip in vips {
            for _ in 0..HELD_PER_FAMILY {
                held.push(HeldConnection::open(sa(vip, TCP_PORT))?);
            }
        }
        Ok(())
    })?;
    let held_on: BTreeMap<String, usize> = held.iter().fold(BTreeMap::new(), |mut m, h| {
        *m.entry(h.first().name.clone()).or_default() += 1;
        m
    });
    eprintln!("held streams before the rollout: {held_on:?}");

    let steps: [(&str, Vec<(&str, Phase)>); 5] = [
        (
            "new1 added",
            vec![("old1", Ready), ("old2", Ready), ("new1", Ready)],
        ),
        (
            "old1 terminating",
            vec![("old1", Terminating), ("old2", Ready), ("new1", Ready)],
        ),
        (
            "old1 gone, new2 added",
            vec![("old2", Ready), ("new1", Ready), ("new2", Ready)],
        ),
        (
            "old2 terminating",
            vec![("old2", Terminating), ("new1", Ready), ("new2", Ready)],
        ),
        ("old2 gone", vec![("new1", Ready), ("new2", Ready)]),
    ];

    let load = Load::default();
    let stop = AtomicBool::new(false);
    let last_step_done = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let clients = scope.spawn(|| {
            run_in(client_ns, || {
                let mut turn = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    let vip = vips[(turn % 2) as usize];
                    turn += 1;
                    let results = [
                        ("tcp", tcp_ask(sa(vip, TCP_PORT))),
                        ("udp", udp_ask(sa(vip, UDP_PORT))),
                    ];
                    for (what, result) in results {
                        match result {
                            Ok(answer) => {
                                load.new_ok.fetch_add(1, Ordering::Relaxed);
                                if last_step_done.load(Ordering::Relaxed) {
                                    if let Ok(mut spread) = load.final_spread.lock() {
                                        *spread.entry(answer.name).or_default() += 1;
                                    }
                                }
                            }
                            Err(e) => load.failed(
                                &load.new_failed,
                                format!("new {what} to {vip} at {:?}: {e:#}", started.elapsed()),
                            ),
                        }
                    }
                }
                Ok(())
            })
        });
        let pinger = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                for h in held.iter_mut() {
                    let expected = h.first().name.clone();
                    match h.ping() {
                        Ok(answer) if answer.name == expected => {
                            load.pings_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(answer) => load.failed(
                            &load.pings_failed,
                            format!("stream to {expected} answered by {}", answer.name),
                        ),
                        Err(e) => load.failed(
                            &load.pings_failed,
                            format!("stream to {expected} at {:?}: {e:#}", started.elapsed()),
                        ),
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let run = || -> Result<()> {
            std::thread::sleep(STEP);
            for (what, endpoints) in &steps {
                f.write_slices("web", false, endpoints)?;
                eprintln!("rollout step at {:?}: {what}", started.elapsed());
                std::thread::sleep(STEP);
            }
            last_step_done.store(true, Ordering::Relaxed);
            std::thread::sleep(STEP);
            Ok(())
        };
        let result = run();
        stop.store(true, Ordering::Relaxed);
        clients
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        pinger
            .join()
            .map_err(|_| anyhow::anyhow!("pinger thread panicked"))?;
        result
    })?;

    let (new_ok, new_failed) = (load.new_ok.into_inner(), load.new_failed.into_inner());
    let (pings_ok, pings_failed) = (load.pings_ok.into_inner(), load.pings_failed.into_inner());
    let first_error = load.first_error.into_inner().ok().flatten();
    let spread = load.final_spread.into_inner().unwrap_or_default();
    eprintln!(
        "MEASURED rolling replacement of every backend under load: {new_ok} new connections/queries answered, \
         {new_failed} failed; {} long-lived streams: {pings_ok} pings answered, {pings_failed} failed (resets); \
         after the rollout new connections reached {spread:?}",
        held.len()
    );
    assert_eq!(new_failed, 0, "new connections failed: {first_error:?}");
    assert_eq!(
        pings_failed, 0,
        "established streams broke (kube-proxy keeps them): {first_error:?}"
    );
    assert!(new_ok > 40, "too little load to mean anything: {new_ok}");
    assert!(
        pings_ok >= (held.len() as u64) * 10,
        "too few pings to mean anything: {pings_ok}"
    );
    assert!(
        spread.keys().all(|b| b == "new1" || b == "new2") && spread.len() == 2,
        "after the rollout new connections must reach exactly new1 and new2: {spread:?}"
    );
    // The streams to the replaced pods still work after they left the slices.
    run_in(client_ns, || {
        for h in held.iter_mut() {
            let answer = h.ping()?;
            anyhow::ensure!(answer.name == h.first().name, "a stream moved");
        }
        Ok(())
    })
}

/// A connected UDP socket keeps querying `dns`; its backend is removed from the slice;
/// time from the manifest write to the first answer from another backend. Then the
/// backend comes back and the next repetition starts.
fn udp_reroute(f: &Fixture) -> Result<()> {
    let client_ns = &f.cluster.pod("client")?.ns;
    let all = ["u1", "u2", "u3"];
    let mut samples = Vec::new();
    for round in 0..REROUTES {
        let client = run_in(client_ns, || UdpClient::open(sa(ip(DNS4), UDP_PORT)))?;
        let Some(first) = client.query(Duration::from_secs(2))? else {
            bail!("round {round}: no first answer from {DNS4}");
        };
        let current = first.name;
        let endpoints: Vec<(&str, Phase)> = all
            .iter()
            .filter(|b| **b != current)
            .map(|b| (*b, Phase::Ready))
            .collect();
        let written = Instant::now();
        f.write_slices("dns", true, &endpoints)?;
        let moved = loop {
            if written.elapsed() > Duration::from_secs(5) {
                bail!("round {round}: still on {current} (or silent) 5 s after its removal");
            }
            match client.query(Duration::from_millis(20))? {
                Some(answer) if answer.name != current => break written.elapsed(),
                _ => {}
            }
        };
        samples.push(moved);
        // Back to three backends before the next round.
        let back: Vec<(&str, Phase)> = all.iter().map(|b| (*b, Phase::Ready)).collect();
        f.write_slices("dns", true, &back)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    let p99 = samples[((samples.len() * 99).div_ceil(100)).saturating_sub(1)];
    eprintln!(
        "MEASURED connected UDP socket re-routed after its backend left the slice ({} rounds, \
         from the manifest write, target {REROUTE_TARGET:?}): p50 {median:?}, p99 {p99:?}, all {samples:?}",
        samples.len()
    );
    Ok(())
}
