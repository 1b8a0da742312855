//! The namespace topology on its own (no BPF): pods reach each other across nodes over
//! IPv4 and IPv6, TCP and UDP, with their real addresses; sysctls stay inside the node
//! namespaces; dropping the cluster removes every namespace and bpffs folder.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use service_lb_tests::netns::{run_in, NETNS_DIR};
use service_lb_tests::privileges::require_root;
use service_lb_tests::servers::{tcp_ask, udp_ask, HeldConnection, Servers};
use service_lb_tests::topology::{Cluster, ClusterSpec};

fn root_ip_forward() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?
        .trim()
        .to_owned())
}

#[test]
fn e2e_topology_pods_reach_each_other() -> Result<()> {
    if !require_root("e2e_topology_pods_reach_each_other") {
        return Ok(());
    }
    let forward_before = root_ip_forward()?;
    let cluster = Cluster::new(&ClusterSpec::new(&[&["client", "a"], &["b"]]))?;
    let namespaces = cluster.namespace_names();
    let bpffs: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| n.bpffs.path().to_path_buf())
        .collect();
    assert_eq!(
        namespaces.len(),
        6,
        "2 nodes + 3 pods + the switch: {namespaces:?}"
    );

    let node1 = cluster.node(1)?;
    let forwarding = run_in(&node1.ns, || {
        Ok(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?)
    })?;
    assert_eq!(
        forwarding.trim(),
        "1",
        "forwarding is on inside the node namespace"
    );
    assert_eq!(
        root_ip_forward()?,
        forward_before,
        "the root namespace's sysctl is untouched"
    );

    let client = cluster.pod("client")?;
    for name in ["a", "b"] {
        let pod = cluster.pod(name)?;
        let addrs = [
            SocketAddr::new(pod.v4.into(), 7000),
            SocketAddr::new(pod.v6.into(), 7000),
        ];
        let _servers = Servers::start(&pod.ns, name, &addrs, &addrs)?;
        for target in addrs {
            let client_ip = client.addr(target.is_ipv6());
            let (tcp, udp, pings) = run_in(&client.ns, || {
                let tcp = tcp_ask(target)?;
                let udp = udp_ask(target)?;
                let mut held = HeldConnection::open(target)?;
                let pings = (0..3)
                    .map(|_| held.ping().map(|a| a.name))
                    .collect::<Result<Vec<_>>>()?;
                Ok((tcp, udp, pings))
            })
            .with_context(|| format!("client -> {target}"))?;
            for answer in [&tcp, &udp] {
                ensure!(answer.name == name, "{target} answered as {}", answer.name);
                ensure!(
                    answer.server_seen_by_client == target,
                    "reply source {}",
                    answer.server_seen_by_client
                );
                ensure!(
                    answer.client_seen_by_server.ip() == client_ip,
                    "client seen as {}",
                    answer.client_seen_by_server
                );
            }
            ensure!(
                pings.iter().all(|p| p == name),
                "pings answered by {pings:?}"
            );
        }
    }
    // A namespace has no route out of the topology.
    let outside: SocketAddr = "198.51.100.1:80".parse()?;
    assert!(
        run_in(&client.ns, || tcp_ask(outside)).is_err(),
        "a pod reached {outside}"
    );

    drop(cluster);
    for ns in &namespaces {
        assert!(
            !Path::new(NETNS_DIR).join(ns).exists(),
            "namespace {ns} left behind"
        );
    }
    for dir in &bpffs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    Ok(())
}
