//! `service-lb attach`: load the programs with their maps pinned, attach them to the
//! interfaces of this network namespace, and exit. The data plane keeps serving (links and
//! maps are pinned); the daemon, or anything writing the pinned maps, programs services.
//! The data-plane flags here are the ones `run` takes too.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use clap::Args;
use service_lb_common::{hairpin::HairpinConfig, DataplaneConfig};

use super::{socket_lb::SocketLbArgs, Failure};
use crate::dataplane::{Dataplane, DataplaneOptions, MapSizes, PinMismatch, DEFAULT_BPFFS};

/// Where the data plane is pinned and how big its maps are.
#[derive(Clone, Debug, Args)]
pub struct DataplaneArgs {
    /// bpffs folder that holds every pinned map and link.
    #[arg(long, env = "SERVICE_LB_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Entries of each services map (master + one slot per backend, summed over frontends).
    #[arg(long, env = "SERVICE_LB_MAP_SERVICES_MAX", default_value_t = MapSizes::default().services)]
    pub map_services_max: u32,
    /// Entries of each backends map.
    #[arg(long, env = "SERVICE_LB_MAP_BACKENDS_MAX", default_value_t = MapSizes::default().backends)]
    pub map_backends_max: u32,
    /// Entries of each reverse-NAT map (one per frontend).
    #[arg(long, env = "SERVICE_LB_MAP_REVNAT_MAX", default_value_t = MapSizes::default().revnat)]
    pub map_revnat_max: u32,
    /// Entries of each TCP conntrack map (two per connection).
    #[arg(long, env = "SERVICE_LB_MAP_CT_TCP_MAX", default_value_t = MapSizes::default().ct_tcp)]
    pub map_ct_tcp_max: u32,
    /// Entries of each UDP/other conntrack map (two per flow).
    #[arg(long, env = "SERVICE_LB_MAP_CT_ANY_MAX", default_value_t = MapSizes::default().ct_any)]
    pub map_ct_any_max: u32,
    /// Replace pinned maps whose layout or size differs (their content, conntrack
    /// included, is lost) instead of refusing to start.
    #[arg(long, env = "SERVICE_LB_RECREATE_MISMATCHED_MAPS")]
    pub recreate_mismatched_maps: bool,
    /// Source address a pod sees when it reaches itself through a Service (hairpin);
    /// 0.0.0.0 turns IPv4 hairpin off. The default is Cilium's service loopback address
    /// (link-local: never a pod's, a node's or a Service's address, never routed off the
    /// node; such packets never reach the node's routing, the programs send them back into
    /// the pod).
    #[arg(long, env = "SERVICE_LB_HAIRPIN_IPV4", default_value_t = Ipv4Addr::from(HairpinConfig::DEFAULT.v4))]
    pub hairpin_ipv4: Ipv4Addr,
    /// As `--hairpin-ipv4` for IPv6; :: turns it off. The default is in the discard-only
    /// prefix 100::/64 (RFC 6666): never anyone's address. A link-local one (fe80::/10)
    /// would not do: the pod would look it up with neighbour discovery on its interface
    /// instead of sending the reply to its gateway, where `from_pod` translates it.
    #[arg(long, env = "SERVICE_LB_HAIRPIN_IPV6", default_value_t = Ipv6Addr::from(HairpinConfig::DEFAULT.v6))]
    pub hairpin_ipv6: Ipv6Addr,
}

impl DataplaneArgs {
    pub fn options(&self) -> DataplaneOptions {
        DataplaneOptions {
            bpffs: self.bpffs.clone(),
            sizes: MapSizes {
                services: self.map_services_max,
                backends: self.map_backends_max,
                revnat: self.map_revnat_max,
                ct_tcp: self.map_ct_tcp_max,
                ct_any: self.map_ct_any_max,
                ..MapSizes::default()
            },
            config: DataplaneConfig::DEFAULT,
            on_pin_mismatch: if self.recreate_mismatched_maps {
                PinMismatch::Recreate
            } else {
                PinMismatch::Refuse
            },
            hairpin: HairpinConfig {
                v4: self.hairpin_ipv4.octets(),
                v6: self.hairpin_ipv6.octets(),
            },
            sock: service_lb_common::sock::SockConfig::ALL_NAMESPACES,
        }
    }
}

/// Which interfaces of this network namespace get which programs.
#[derive(Clone, Debug, Args)]
pub struct InterfaceArgs {
    /// Globs of host-side pod interfaces (from_pod on ingress, to_pod on egress); comma
    /// separated. With `run`, matching interfaces that appear later are attached too.
    #[arg(
        long,
        env = "SERVICE_LB_POD_INTERFACES",
        value_delimiter = ',',
        default_value = "veth*,lxc*,cali*"
    )]
    pub pod_interfaces: Vec<String>,
    /// Globs of external devices (from_net on ingress, to_net on egress); comma separated.
    #[arg(long, env = "SERVICE_LB_EXTERNAL_INTERFACES", value_delimiter = ',')]
    pub external_interfaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub dataplane: DataplaneArgs,
    #[command(flatten)]
    pub interfaces: InterfaceArgs,
    #[command(flatten)]
    pub socket_lb: SocketLbArgs,
}

pub fn run(args: &AttachArgs) -> Result<(), Failure> {
    let options = DataplaneOptions {
        sock: args.socket_lb.config(),
        ..args.dataplane.options()
    };
    let mut dataplane = Dataplane::open(&options)?;
    for map in dataplane.recreated_maps() {
        tracing::warn!(
            ?map,
            "recreated a pinned map whose layout differed; its entries are lost"
        );
    }
    let attached = dataplane.attach(
        &args.interfaces.pod_interfaces,
        &args.interfaces.external_interfaces,
    )?;
    for a in &attached {
        println!(
            "{} {} on {} (ifindex {}), pinned at {}",
            if a.replaced { "replaced" } else { "attached" },
            a.hook.name(),
            a.ifname,
            a.ifindex,
            a.pinned_at.display()
        );
    }
    match args.socket_lb.cgroup() {
        Some(cgroup) => {
            for a in dataplane.attach_sock(&cgroup)? {
                println!(
                    "{} {} on cgroup {}, pinned at {}",
                    if a.replaced { "replaced" } else { "attached" },
                    a.program,
                    a.cgroup.display(),
                    a.pinned_at.display()
                );
            }
        }
        None => {
            crate::dataplane::sock::detach_all(&args.dataplane.bpffs)?;
        }
    }
    println!(
        "{} attachment(s); maps pinned under {}",
        attached.len(),
        args.dataplane.bpffs.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        attach: AttachArgs,
    }

    #[test]
    fn map_size_flags_reach_the_options() {
        let p = Probe::try_parse_from([
            "probe",
            "--map-services-max=1000",
            "--map-ct-tcp-max=2000",
            "--bpffs=/sys/fs/bpf/x",
            "--pod-interfaces=slbp*,veth*",
            "--external-interfaces=eth0",
        ])
        .expect("flags parse");
        let opts = p.attach.dataplane.options();
        assert_eq!(opts.sizes.services, 1000);
        assert_eq!(opts.sizes.ct_tcp, 2000);
        assert_eq!(opts.sizes.backends, MapSizes::default().backends);
        assert_eq!(opts.bpffs, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(opts.on_pin_mismatch, PinMismatch::Refuse);
        assert_eq!(p.attach.interfaces.pod_interfaces, ["slbp*", "veth*"]);
        assert_eq!(p.attach.interfaces.external_interfaces, ["eth0"]);
    }
}
