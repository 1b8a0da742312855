//! End to end hairpin with the real `service-lb run --manifests` daemon inside a namespace
//! node: a pod that is the only backend of a ClusterIP Service calls the ClusterIP and
//! gets its own answer, TCP and UDP, IPv4 and IPv6. Its server sees the connection from
//! the hairpin address (`--hairpin-ipv4` / `--hairpin-ipv6`, test addresses from the
//! node range); its client sees the answer from the ClusterIP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use service_lb_tests::daemon::{
    metric_samples, metric_sum, Daemon, DaemonOptions, EndpointSpec, ManifestDir, PortSpec,
    ServiceManifest, SliceManifest,
};
use service_lb_tests::netns::{run_in, sweep_leftovers};
use service_lb_tests::privileges::require_root;
use service_lb_tests::servers::{tcp_ask, udp_ask, Answer, Servers};
use service_lb_tests::topology::{Cluster, ClusterSpec, TEST_HAIRPIN_IPV4, TEST_HAIRPIN_IPV6};

const VIP4: &str = "198.19.0.42";
const VIP6: &str = "fd00:19::42";
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
const UDP_PORT: u16 = 53;
const UDP_TARGET: u16 = 5353;
const READY_BOUND: Duration = Duration::from_secs(30);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a literal address")
}

fn service() -> ServiceManifest {
    ServiceManifest {
        namespace: "default".into(),
        name: "self".into(),
        cluster_ips: vec![ip(VIP4), ip(VIP6)],
        ports: vec![
            (PortSpec::new("http", TCP_PORT, "TCP"), TCP_TARGET),
            (PortSpec::new("dns", UDP_PORT, "UDP"), UDP_TARGET),
        ],
    }
}

fn slice(v6: bool, addr: IpAddr) -> SliceManifest {
    SliceManifest {
        namespace: "default".into(),
        name: format!("self-{}", if v6 { "v6" } else { "v4" }),
        service: "self".into(),
        ipv6: v6,
        ports: vec![
            PortSpec::new("http", TCP_TARGET, "TCP"),
            PortSpec::new("dns", UDP_TARGET, "UDP"),
        ],
        endpoints: vec![EndpointSpec {
            addr,
            node: "n1".into(),
            ready: true,
            terminating: false,
        }],
        trigger_time: None,
    }
}

/// The answer came from the pod's own server, which saw the hairpin address, and the
/// client saw it come from the frontend it asked.
fn check(what: &str, answer: &Answer, frontend: SocketAddr, hairpin: IpAddr) -> Result<()> {
    ensure!(answer.name == "web", "{what}: answered by {answer:?}");
    ensure!(
        answer.client_seen_by_server.ip() == hairpin,
        "{what}: the server saw {}, expected the hairpin address {hairpin}",
        answer.client_seen_by_server
    );
    ensure!(
        answer.server_seen_by_client == frontend,
        "{what}: the client saw the answer from {}, expected {frontend}",
        answer.server_seen_by_client
    );
    Ok(())
}

#[test]
fn e2e_hairpin_pod_reaches_itself_through_its_clusterip() -> Result<()> {
    if !require_root("e2e_hairpin_pod_reaches_itself_through_its_clusterip") {
        return Ok(());
    }
    sweep_leftovers();
    let cluster = Cluster::new(&ClusterSpec::new(&[&["web"]])).context("building the topology")?;
    let pod = cluster.pod("web")?;
    let node = cluster.node(1)?;
    let _servers = Servers::start(
        &pod.ns,
        "web",
        &[
            SocketAddr::new(pod.v4.into(), TCP_TARGET),
            SocketAddr::new(pod.v6.into(), TCP_TARGET),
        ],
        &[
            SocketAddr::new(pod.v4.into(), UDP_TARGET),
            SocketAddr::new(pod.v6.into(), UDP_TARGET),
        ],
    )?;
    let manifests = ManifestDir::create(cluster.prefix())?;
    manifests.write("self-service.yaml", &service().yaml())?;
    let slices = [false, true]
        .map(|v6| slice(v6, pod.addr(v6)).yaml())
        .join("---\n");
    manifests.write("self-slices.yaml", &slices)?;

    let options = DaemonOptions::for_node(
        node.bpffs.path(),
        manifests.path(),
        "n1",
        manifests.log_path("n1"),
    );
    let mut daemon = Daemon::start(&node.ns, options)?;
    let ready = daemon.wait_ready(READY_BOUND)?;
    eprintln!("daemon ready after {ready:?}");

    let cases = [
        (
            "IPv4 TCP",
            true,
            SocketAddr::new(ip(VIP4), TCP_PORT),
            IpAddr::V4(TEST_HAIRPIN_IPV4),
        ),
        (
            "IPv4 UDP",
            false,
            SocketAddr::new(ip(VIP4), UDP_PORT),
            IpAddr::V4(TEST_HAIRPIN_IPV4),
        ),
        (
            "IPv6 TCP",
            true,
            SocketAddr::new(ip(VIP6), TCP_PORT),
            IpAddr::V6(TEST_HAIRPIN_IPV6),
        ),
        (
            "IPv6 UDP",
            false,
            SocketAddr::new(ip(VIP6), UDP_PORT),
            IpAddr::V6(TEST_HAIRPIN_IPV6),
        ),
    ];
    for (what, tcp, frontend, hairpin) in cases {
        let answer = run_in(&pod.ns, || {
            if tcp {
                tcp_ask(frontend)
            } else {
                udp_ask(frontend)
            }
        })
        .with_context(|| {
            format!(
                "{what}: the pod asking {frontend}; daemon log:\n{}",
                daemon.log_tail(20)
            )
        })?;
        check(what, &answer, frontend, hairpin)?;
    }

    let samples = metric_samples(&daemon.metrics()?);
    for reason in ["hairpin_new_flow", "hairpin_reply"] {
        let label = format!("reason=\"{reason}\"");
        let packets = metric_sum(
            &samples,
            "service_lb_datapath_packets_total",
            &["hook=\"from_pod\"", &label],
        );
        eprintln!("from_pod {reason}: {packets} packets");
        ensure!(packets >= 4.0, "from_pod {reason}: {packets} packets");
    }
    daemon.stop()?;
    Ok(())
}
