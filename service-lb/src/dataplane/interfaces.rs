//! Interface discovery in the CURRENT network namespace (netlink via `if_nameindex`, not
//! /sys/class/net, which shows the network namespace of the sysfs mount).

use std::net::IpAddr;

use glob::Pattern;
use service_lb_common::Hook;

use super::error::DataplaneError;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    pub ifindex: u32,
    pub ifname: String,
}

/// Every interface of the calling thread's network namespace.
pub fn list() -> Result<Vec<Interface>, DataplaneError> {
    let names = nix::net::if_::if_nameindex().map_err(DataplaneError::ListInterfaces)?;
    let mut out: Vec<Interface> = names
        .iter()
        .map(|i| Interface {
            ifindex: i.index(),
            ifname: i.name().to_string_lossy().into_owned(),
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Compiled pod and external interface globs.
#[derive(Clone, Debug)]
pub struct Roles {
    pod: Vec<Pattern>,
    external: Vec<Pattern>,
}

impl Roles {
    pub fn new(pod_globs: &[String], external_globs: &[String]) -> Result<Self, DataplaneError> {
        let compile = |globs: &[String]| {
            globs
                .iter()
                .map(|g| {
                    Pattern::new(g).map_err(|source| DataplaneError::BadGlob {
                        glob: g.clone(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            pod: compile(pod_globs)?,
            external: compile(external_globs)?,
        })
    }

    /// `ifname` matches an external interface glob.
    pub fn is_external(&self, ifname: &str) -> bool {
        self.external.iter().any(|p| p.matches(ifname))
    }

    /// The hooks to attach to `ifname`: from_pod + to_pod for a pod interface, from_net +
    /// to_net for an external one, none otherwise. An interface in both roles is an error.
    pub fn hooks_for(&self, ifname: &str) -> Result<&'static [Hook], DataplaneError> {
        let pod = self.pod.iter().any(|p| p.matches(ifname));
        let external = self.external.iter().any(|p| p.matches(ifname));
        match (pod, external) {
            (true, true) => Err(DataplaneError::InterfaceInBothRoles(ifname.to_string())),
            (true, false) => Ok(&[Hook::FromPod, Hook::ToPod]),
            (false, true) => Ok(&[Hook::FromNet, Hook::ToNet]),
            (false, false) => Ok(&[]),
        }
    }
}

/// The addresses of the external interfaces (NodePort addresses besides the Node
/// object's), in the calling thread's network namespace, sorted, once each. IPv6
/// link-local addresses are left out (they need a zone to be reached).
pub fn external_addresses(roles: &Roles) -> Result<Vec<IpAddr>, DataplaneError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(DataplaneError::ListInterfaces)?;
    let mut out: Vec<IpAddr> = addrs
        .filter(|a| roles.is_external(&a.interface_name))
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            let v6 = addr.as_sockaddr_in6()?.ip();
            let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
            (!link_local).then_some(IpAddr::V6(v6))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_addresses_come_from_the_matching_interfaces() {
        // Unprivileged: the loopback of whatever namespace runs the test.
        let lo = Roles::new(&[], &["lo".into()]).unwrap();
        let addrs = external_addresses(&lo).unwrap();
        assert!(
            addrs.contains(&IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
        let none = Roles::new(&[], &["no-such-interface*".into()]).unwrap();
        assert_eq!(external_addresses(&none).unwrap(), Vec::<IpAddr>::new());
    }

    #[test]
    fn roles_pick_hooks_by_glob() {
        let roles = Roles::new(&["veth*".into(), "lxc?".into()], &["eth0".into()]).unwrap();
        assert_eq!(
            roles.hooks_for("veth12ab").unwrap(),
            &[Hook::FromPod, Hook::ToPod]
        );
        assert_eq!(
            roles.hooks_for("lxc1").unwrap(),
            &[Hook::FromPod, Hook::ToPod]
        );
        assert!(roles.hooks_for("lxc12").unwrap().is_empty());
        assert_eq!(
            roles.hooks_for("eth0").unwrap(),
            &[Hook::FromNet, Hook::ToNet]
        );
        assert!(roles.hooks_for("lo").unwrap().is_empty());
    }

    #[test]
    fn an_interface_in_both_roles_is_refused() {
        let roles = Roles::new(&["e*".into()], &["eth0".into()]).unwrap();
        assert!(
            matches!(roles.hooks_for("eth0"), Err(DataplaneError::InterfaceInBothRoles(n)) if n == "eth0")
        );
    }

    #[test]
    fn a_bad_glob_is_a_typed_error() {
        assert!(matches!(
            Roles::new(&["[".into()], &[]),
            Err(DataplaneError::BadGlob { .. })
        ));
    }

    #[test]
    fn lists_loopback() {
        // Every network namespace has `lo`; the listing is netlink-based and unprivileged.
        let all = list().unwrap();
        assert!(all.iter().any(|i| i.ifname == "lo"), "{all:?}");
    }
}
