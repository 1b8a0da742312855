//! A small cluster made of network namespaces (`shared/notes/test-network.md`).
//!
//! ```text
//!  pod ns "b1"            node ns "n1"                      node ns "n2"           pod ns "b2"
//!  eth0 198.18.1.10/32 -- slbp0 (gw 198.18.1.1/32)           slbp0 (gw 198.18.2.1) -- eth0 198.18.2.10
//!                          slbu0 198.19.255.1/24 ---- switch ns (bridge) ---- slbu0 198.19.255.2/24
//! ```
//!
//! - Node `i` (1-based) owns pod CIDRs 198.18.i.0/24 and fd00:18:0:i::/64, has forwarding
//!   on (in its own namespace only) and routes the other nodes' pod CIDRs via their
//!   underlay address. Its pod veths are named `slbp<k>` ([`POD_VETH_GLOB`]) and its
//!   underlay device is [`UNDERLAY_DEV`] (the "external" device).
//! - Pod `k` of node `i` has 198.18.i.(10+k)/32 and fd00:18:0:i::(10+k)/128 on `eth0`,
//!   the node gateway as an on-link route, and 198.18.0.0/15 + fd00::/16 via the gateway.
//!   No namespace has a default route.
//! - With two or more nodes the underlay is a bridge in a separate "switch" namespace.
//! - Each node gets a bpffs folder `/sys/fs/bpf/<prefix>-<node>`; dropping the cluster
//!   removes those folders (unpinning links and maps) before deleting any namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::netns::{run_prefix, NetNs, BPFFS_ROOT};

/// Glob selecting the node-side pod veths of a node.
pub const POD_VETH_GLOB: &str = "slbp*";
/// Name of the underlay device of every node.
pub const UNDERLAY_DEV: &str = "slbu0";
/// Name of the pod side of a pod veth.
pub const POD_DEV: &str = "eth0";
/// Host part of the first pod address of a node (198.18.i.10, fd00:18:0:i::a).
pub const FIRST_POD_HOST: u8 = 10;
const BRIDGE_DEV: &str = "slbbr0";
const MAX_NODES: usize = 250;
const MAX_PODS_PER_NODE: usize = 200;

/// What to build: the pods (by name) of each node, node 1 first.
#[derive(Clone, Debug, Default)]
pub struct ClusterSpec {
    pub nodes: Vec<Vec<String>>,
    /// Also an external client namespace behind node 1's external device
    /// ([`EXTERNAL_DEV`]); see [`ExternalClient`]. Off by default.
    pub external_client: bool,
}

impl ClusterSpec {
    /// `ClusterSpec::new(&[&["client", "b1"], &["b2", "b3"]])`.
    pub fn new(nodes: &[&[&str]]) -> Self {
        Self {
            nodes: nodes
                .iter()
                .map(|pods| pods.iter().map(|p| (*p).to_owned()).collect())
                .collect(),
            external_client: false,
        }
    }

    /// The same cluster with an external client namespace behind node 1.
    #[must_use]
    pub fn with_external_client(mut self) -> Self {
        self.external_client = true;
        self
    }
}

/// Node 1's external device towards the external client (with [`ClusterSpec::external_client`]).
pub const EXTERNAL_DEV: &str = "slbx0";
/// Node 1's address on [`EXTERNAL_DEV`]: the external client's gateway.
pub const EXTERNAL_GW4: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
pub const EXTERNAL_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc8, 0, 0, 0, 0, 0, 1);

/// A client outside the cluster: a namespace whose `eth0` is a veth to node 1's
/// [`EXTERNAL_DEV`], with two addresses per family from the external range: `v4`/`v6`
/// inside 198.19.200.0/25 and fd00:c8::/121 (the "allowed" source ranges a test can give a
/// LoadBalancer) and `other_v4`/`other_v6` outside them (198.19.200.130, fd00:c8::90;
/// used only when a socket binds them). Routes: 198.19.0.0/16 and fd00::/16 via node 1
/// (node addresses, externalIPs and LB IPs), nothing else; the other nodes route
/// 198.19.200.0/24 and fd00:c8::/64 via node 1's underlay address.
#[derive(Debug)]
pub struct ExternalClient {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub other_v4: Ipv4Addr,
    pub other_v6: Ipv6Addr,
    pub ns: NetNs,
}

/// A pod: its namespace and its addresses.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    /// 1-based index of the node it runs on.
    pub node: u8,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// Node-side end of its veth.
    pub host_veth: String,
    pub ns: NetNs,
}

impl Pod {
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.v6.into()
        } else {
            self.v4.into()
        }
    }
}

/// A bpffs folder owned by a node; removed on drop (links and maps unpinned).
#[derive(Debug)]
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    fn create(path: PathBuf) -> Result<Self> {
        ensure_bpffs_mounted()?;
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Detaches and unpins whatever the data plane left there, then removes the folder.
    /// Idempotent.
    pub fn remove(&self) -> Result<()> {
        service_lb::daemon::policy::remove_snapshot(&self.path)
            .with_context(|| format!("removing the policy snapshot of {}", self.path.display()))?;
        if !self.path.exists() {
            return Ok(());
        }
        service_lb::dataplane::cleanup(&self.path)
            .with_context(|| format!("service-lb cleanup of {}", self.path.display()))?;
        if self.path.exists() {
            std::fs::remove_dir_all(&self.path)
                .with_context(|| format!("removing {}", self.path.display()))?;
        }
        Ok(())
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A node: its namespace, underlay addresses and bpffs folder.
#[derive(Debug)]
pub struct Node {
    /// 1-based.
    pub index: u8,
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    // Declared before `ns`: dropped (unpinned) first.
    pub bpffs: BpffsDir,
    pub ns: NetNs,
}

/// The whole topology. Drop order: bpffs folders, then pods, nodes and the switch.
#[derive(Debug)]
pub struct Cluster {
    prefix: String,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    /// With [`ClusterSpec::external_client`].
    pub external: Option<ExternalClient>,
    switch: Option<NetNs>,
}

impl Cluster {
    /// Builds the topology under a fresh [`run_prefix`].
    pub fn new(spec: &ClusterSpec) -> Result<Self> {
        if spec.nodes.is_empty() || spec.nodes.len() > MAX_NODES {
            bail!(
                "a cluster needs 1..={MAX_NODES} nodes, got {}",
                spec.nodes.len()
            );
        }
        let prefix = run_prefix();
        let mut cluster = Self {
            prefix,
            nodes: Vec::new(),
            pods: Vec::new(),
            external: None,
            switch: None,
        };
        for i in 1..=spec.nodes.len() {
            let node = cluster.add_node(node_index(i)?)?;
            cluster.nodes.push(node);
        }
        if cluster.nodes.len() > 1 {
            cluster.build_underlay()?;
        }
        for (i, pods) in spec.nodes.iter().enumerate() {
            if pods.len() > MAX_PODS_PER_NODE {
                bail!("at most {MAX_PODS_PER_NODE} pods per node");
            }
            for (k, name) in pods.iter().enumerate() {
                let pod = cluster.add_pod(i, k, name)?;
                cluster.pods.push(pod);
            }
        }
        if spec.external_client {
            cluster.external = Some(cluster.add_external_client()?);
        }
        Ok(cluster)
    }

    /// The external client (built with [`ClusterSpec::with_external_client`]).
    pub fn external(&self) -> Result<&ExternalClient> {
        self.external
            .as_ref()
            .context("the cluster was built without an external client")
    }

    fn add_external_client(&self) -> Result<ExternalClient> {
        let node = self.node(1)?;
        let client = ExternalClient {
            v4: Ipv4Addr::new(198, 19, 200, 10),
            v6: Ipv6Addr::new(0xfd00, 0xc8, 0, 0, 0, 0, 0, 0x10),
            other_v4: Ipv4Addr::new(198, 19, 200, 130),
            other_v6: Ipv6Addr::new(0xfd00, 0xc8, 0, 0, 0, 0, 0, 0x90),
            ns: new_namespace(&format!("{}-ext", self.prefix))?,
        };
        let ns = &client.ns;
        node.ns.ip(&[
            "link",
            "add",
            EXTERNAL_DEV,
            "type",
            "veth",
            "peer",
            "name",
            POD_DEV,
            "netns",
            ns.name(),
        ])?;
        node.ns.ip(&[
            "addr",
            "add",
            &format!("{EXTERNAL_GW4}/32"),
            "dev",
            EXTERNAL_DEV,
        ])?;
        node.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{EXTERNAL_GW6}/128"),
            "dev",
            EXTERNAL_DEV,
            "nodad",
        ])?;
        node.ns.ip(&["link", "set", EXTERNAL_DEV, "up"])?;
        for v4 in [client.v4, client.other_v4] {
            ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", POD_DEV])?;
            node.ns
                .ip(&["route", "add", &format!("{v4}/32"), "dev", EXTERNAL_DEV])?;
        }
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/128", client.v6),
            "dev",
            POD_DEV,
            "nodad",
        ])?;
        // Deprecated at once: a source only when a socket binds it.
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/128", client.other_v6),
            "dev",
            POD_DEV,
            "nodad",
            "preferred_lft",
            "0",
        ])?;
        for v6 in [client.v6, client.other_v6] {
            node.ns.ip(&[
                "-6",
                "route",
                "add",
                &format!("{v6}/128"),
                "dev",
                EXTERNAL_DEV,
            ])?;
        }
        ns.ip(&["link", "set", POD_DEV, "up"])?;
        ns.ip(&[
            "route",
            "add",
            &EXTERNAL_GW4.to_string(),
            "dev",
            POD_DEV,
            "scope",
            "link",
        ])?;
        ns.ip(&[
            "route",
            "add",
            "198.19.0.0/16",
            "via",
            &EXTERNAL_GW4.to_string(),
            "dev",
            POD_DEV,
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            &EXTERNAL_GW6.to_string(),
            "dev",
            POD_DEV,
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "fd00::/16",
            "via",
            &EXTERNAL_GW6.to_string(),
            "dev",
            POD_DEV,
        ])?;
        for peer in self.nodes.iter().filter(|n| n.index != node.index) {
            peer.ns.ip(&[
                "route",
                "add",
                "198.19.200.0/24",
                "via",
                &node.v4.to_string(),
                "dev",
                UNDERLAY_DEV,
            ])?;
            peer.ns.ip(&[
                "-6",
                "route",
                "add",
                "fd00:c8::/64",
                "via",
                &node.v6.to_string(),
                "dev",
                UNDERLAY_DEV,
            ])?;
        }
        Ok(client)
    }

    /// The run prefix every name of this cluster starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Node by 1-based index.
    pub fn node(&self, index: u8) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.index == index)
            .with_context(|| format!("no node {index}"))
    }

    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name:?}"))
    }

    /// Names of every namespace of the cluster (for leak checks).
    pub fn namespace_names(&self) -> Vec<String> {
        let nodes = self.nodes.iter().map(|n| n.ns.name().to_owned());
        let pods = self.pods.iter().map(|p| p.ns.name().to_owned());
        let switch = self.switch.iter().map(|s| s.name().to_owned());
        let external = self.external.iter().map(|e| e.ns.name().to_owned());
        nodes.chain(pods).chain(switch).chain(external).collect()
    }

    /// Gives pod `name` one more address per family, host `host` of its node's pod CIDRs
    /// (198.18.i.host/32, fd00:18:0:i::host/128), routed to it by its node: another
    /// client address in the same pod (session affinity keys on the client address).
    /// `host` must be above the node's pod addresses (and below 255).
    pub fn add_pod_address(&self, name: &str, host: u8) -> Result<(Ipv4Addr, Ipv6Addr)> {
        let pod = self.pod(name)?;
        let node = self.node(pod.node)?;
        let first_free =
            usize::from(FIRST_POD_HOST) + self.pods.iter().filter(|p| p.node == pod.node).count();
        if usize::from(host) < first_free || host == u8::MAX {
            bail!(
                "host {host} collides with a pod or gateway address of node {}",
                node.name
            );
        }
        let v4 = Ipv4Addr::new(198, 18, node.index, host);
        let v6 = Ipv6Addr::new(0xfd00, 0x18, 0, node.index.into(), 0, 0, 0, host.into());
        pod.ns
            .ip(&["addr", "add", &format!("{v4}/32"), "dev", POD_DEV])?;
        // Deprecated at once: used when a socket binds it, never picked as the source of
        // an unbound one (the pod's first address stays its default).
        pod.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            POD_DEV,
            "nodad",
            "preferred_lft",
            "0",
        ])?;
        node.ns
            .ip(&["route", "add", &format!("{v4}/32"), "dev", &pod.host_veth])?;
        node.ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("{v6}/128"),
            "dev",
            &pod.host_veth,
        ])?;
        Ok((v4, v6))
    }

    fn add_node(&self, index: u8) -> Result<Node> {
        let name = format!("n{index}");
        let ns = new_namespace(&format!("{}-{name}", self.prefix))?;
        ns.sysctl("net/ipv4/ip_forward", "1")?;
        ns.sysctl("net/ipv6/conf/all/forwarding", "1")?;
        for scope in ["all", "default"] {
            ns.sysctl(&format!("net/ipv4/conf/{scope}/rp_filter"), "0")?;
        }
        let bpffs =
            BpffsDir::create(Path::new(BPFFS_ROOT).join(format!("{}-{name}", self.prefix)))?;
        Ok(Node {
            index,
            name,
            v4: Ipv4Addr::new(198, 19, 255, index),
            v6: Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, index.into()),
            bpffs,
            ns,
        })
    }

    /// A bridge in a switch namespace, one veth per node (`slbu0` on the node side).
    fn build_underlay(&mut self) -> Result<()> {
        let switch = new_namespace(&format!("{}-sw", self.prefix))?;
        switch.ip(&["link", "add", BRIDGE_DEV, "type", "bridge"])?;
        switch.ip(&["link", "set", BRIDGE_DEV, "up"])?;
        for node in &self.nodes {
            let port = format!("sw{}", node.index);
            switch.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_DEV,
                "netns",
                node.ns.name(),
            ])?;
            switch.ip(&["link", "set", &port, "master", BRIDGE_DEV])?;
            switch.ip(&["link", "set", &port, "up"])?;
            let ns = &node.ns;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", node.v4),
                "dev",
                UNDERLAY_DEV,
            ])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{}/64", node.v6),
                "dev",
                UNDERLAY_DEV,
                "nodad",
            ])?;
            ns.ip(&["link", "set", UNDERLAY_DEV, "up"])?;
        }
        for node in &self.nodes {
            for peer in self.nodes.iter().filter(|p| p.index != node.index) {
                let (cidr4, cidr6) = pod_cidrs(peer.index);
                node.ns.ip(&[
                    "route",
                    "add",
                    &cidr4,
                    "via",
                    &peer.v4.to_string(),
                    "dev",
                    UNDERLAY_DEV,
                ])?;
                node.ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    &cidr6,
                    "via",
                    &peer.v6.to_string(),
                    "dev",
                    UNDERLAY_DEV,
                ])?;
            }
        }
        self.switch = Some(switch);
        Ok(())
    }

    /// Pod `k` (0-based) of node `i` (0-based).
    fn add_pod(&self, i: usize, k: usize, name: &str) -> Result<Pod> {
        let node = &self.nodes[i];
        let host = u8::try_from(k + usize::from(FIRST_POD_HOST)).context("too many pods")?;
        let (gw4, gw6) = gateways(node.index);
        let v4 = Ipv4Addr::new(198, 18, node.index, host);
        let v6 = Ipv6Addr::new(0xfd00, 0x18, 0, node.index.into(), 0, 0, 0, host.into());
        let host_veth = format!("slbp{k}");
        let ns = new_namespace(&format!("{}-{name}", self.prefix))?;

        node.ns.ip(&[
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            POD_DEV,
            "netns",
            ns.name(),
        ])?;
        node.ns
            .ip(&["addr", "add", &format!("{gw4}/32"), "dev", &host_veth])?;
        node.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{gw6}/128"),
            "dev",
            &host_veth,
            "nodad",
        ])?;
        node.ns.ip(&["link", "set", &host_veth, "up"])?;
        node.ns
            .ip(&["route", "add", &format!("{v4}/32"), "dev", &host_veth])?;
        node.ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("{v6}/128"),
            "dev",
            &host_veth,
        ])?;

        ns.ip(&["addr", "add", &format!("{v4}/32"), "dev", POD_DEV])?;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}/128"),
            "dev",
            POD_DEV,
            "nodad",
        ])?;
        ns.ip(&["link", "set", POD_DEV, "up"])?;
        ns.ip(&[
            "route",
            "add",
            &gw4.to_string(),
            "dev",
            POD_DEV,
            "scope",
            "link",
        ])?;
        ns.ip(&[
            "route",
            "add",
            "198.18.0.0/15",
            "via",
            &gw4.to_string(),
            "dev",
            POD_DEV,
        ])?;
        ns.ip(&["-6", "route", "add", &gw6.to_string(), "dev", POD_DEV])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "fd00::/16",
            "via",
            &gw6.to_string(),
            "dev",
            POD_DEV,
        ])?;

        Ok(Pod {
            name: name.to_owned(),
            node: node.index,
            v4,
            v6,
            host_veth,
            ns,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Pinned links keep programs attached: unpin before any namespace goes away.
        for node in &self.nodes {
            if let Err(e) = node.bpffs.remove() {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// A namespace whose links get usable IPv6 link-local addresses at once (no duplicate
/// address detection: every address here is assigned by the topology itself).
fn new_namespace(name: &str) -> Result<NetNs> {
    let ns = NetNs::create(name)?;
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net/ipv6/conf/{scope}/accept_dad"), "0")?;
    }
    Ok(ns)
}

/// Pod CIDRs of node `i`.
pub fn pod_cidrs(i: u8) -> (String, String) {
    (format!("198.18.{i}.0/24"), format!("fd00:18:0:{i:x}::/64"))
}

/// Gateway addresses of node `i` (the node side of every pod veth).
pub fn gateways(i: u8) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(198, 18, i, 1),
        Ipv6Addr::new(0xfd00, 0x18, 0, i.into(), 0, 0, 0, 1),
    )
}

fn node_index(i: usize) -> Result<u8> {
    u8::try_from(i).context("node index out of range")
}

/// Mounts bpffs at `/sys/fs/bpf` when nothing is mounted there.
pub fn ensure_bpffs_mounted() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let fs =
        nix::sys::statfs::statfs(BPFFS_ROOT).with_context(|| format!("statfs {BPFFS_ROOT}"))?;
    #[allow(clippy::useless_conversion)]
    if i64::from(fs.filesystem_type().0) == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS_ROOT,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS_ROOT}"))
}

/// Hairpin source addresses for test nodes (`--hairpin-ipv4` / `--hairpin-ipv6`): from the
/// node range, which pods route via their gateway (the real-cluster defaults are outside
/// the test ranges). No node has them.
pub const TEST_HAIRPIN_IPV4: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);
pub const TEST_HAIRPIN_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 0xfe);
