//! Attaching the programs with TCX and pinning each link under `<bpffs>/links`, so the
//! data plane outlives the process. An existing link pin for the same interface and hook
//! gets its program replaced atomically (`bpf_link_update`): the no-gap upgrade path.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, TcAttachType,
};
use service_lb_common::Hook;
use tracing::{info, warn};

use super::{
    error::DataplaneError,
    interfaces::{self, Interface, Roles},
    link_detach,
    loader::Dataplane,
    pin,
};

/// One program attached to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub ifindex: u32,
    pub hook: Hook,
    pub pinned_at: PathBuf,
    /// The link existed (pinned by an earlier run) and only its program was replaced.
    pub replaced: bool,
}

/// The tc direction of a hook (only the tc hooks, `Hook::TC`, are attached with tc).
pub fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::FromPod | Hook::FromNet => TcAttachType::Ingress,
        _ => TcAttachType::Egress,
    }
}

/// Pin file name of a link: `<ifindex>-<ifname>-<hook>`.
pub fn link_pin_name(ifindex: u32, ifname: &str, hook: Hook) -> String {
    format!("{ifindex}-{ifname}-{}", hook.name())
}

/// Parses a link pin name back into (ifindex, ifname, hook).
pub fn parse_link_pin_name(name: &str) -> Option<(u32, &str, Hook)> {
    let (index, rest) = name.split_once('-')?;
    let ifindex = index.parse().ok()?;
    Hook::TC.into_iter().find_map(|hook| {
        let ifname = rest.strip_suffix(hook.name())?.strip_suffix('-')?;
        (!ifname.is_empty()).then_some((ifindex, ifname, hook))
    })
}

impl Dataplane {
    /// Attaches from_pod/to_pod to the interfaces matching `pod_globs` and from_net/to_net
    /// to those matching `external_globs`, in the calling thread's network namespace.
    /// Removes link pins whose interface is gone.
    pub fn attach(
        &mut self,
        pod_globs: &[String],
        external_globs: &[String],
    ) -> Result<Vec<Attachment>, DataplaneError> {
        let roles = Roles::new(pod_globs, external_globs)?;
        let present = interfaces::list()?;
        remove_stale_link_pins(&self.bpffs, &present)?;
        let mut done = Vec::new();
        for iface in &present {
            for &hook in roles.hooks_for(&iface.ifname)? {
                done.push(self.attach_one(iface, hook)?);
            }
        }
        Ok(done)
    }

    /// Attaches the hooks `roles` gives one interface (none when its name matches no
    /// glob), in the calling thread's network namespace. Used by `link_watch` for
    /// interfaces that appear after start.
    pub fn attach_interface(
        &mut self,
        iface: &Interface,
        roles: &Roles,
    ) -> Result<Vec<Attachment>, DataplaneError> {
        roles
            .hooks_for(&iface.ifname)?
            .iter()
            .map(|&hook| self.attach_one(iface, hook))
            .collect()
    }

    fn attach_one(&mut self, iface: &Interface, hook: Hook) -> Result<Attachment, DataplaneError> {
        let pinned_at =
            pin::links_dir(&self.bpffs).join(link_pin_name(iface.ifindex, &iface.ifname, hook));
        let err = |what: &'static str| {
            let ifname = iface.ifname.clone();
            move |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Attach {
                ifname,
                hook: hook.name(),
                what,
                source,
            }
        };
        let program = self.program_mut(hook)?;
        let replaced = match PinnedLink::from_pin(&pinned_at) {
            Ok(existing) => {
                let link = SchedClassifierLink::try_from(FdLink::from(existing))
                    .map_err(|e| err("reopening the pinned link")(e.into()))?;
                // Ownership of the fd moves to the program; the pin keeps the link alive.
                program
                    .attach_to_link(link)
                    .map_err(|e| err("replacing the program")(e.into()))?;
                true
            }
            Err(aya::programs::links::LinkError::SyscallError(e))
                if e.io_error.kind() == io::ErrorKind::NotFound =>
            {
                let id = program
                    .attach_with_options(
                        &iface.ifname,
                        attach_type(hook),
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| err("attaching with tcx")(e.into()))?;
                let link = program
                    .take_link(id)
                    .map_err(|e| err("taking the link")(e.into()))?;
                let fd_link =
                    FdLink::try_from(link).map_err(|e| err("not a tcx link")(e.into()))?;
                fd_link
                    .pin(&pinned_at)
                    .map_err(|e| err("pinning the link")(e.into()))?;
                false
            }
            Err(e) => return Err(err("opening the pinned link")(e.into())),
        };
        info!(ifname = %iface.ifname, ifindex = iface.ifindex, hook = hook.name(), replaced, "attached");
        Ok(Attachment {
            ifname: iface.ifname.clone(),
            ifindex: iface.ifindex,
            hook,
            pinned_at,
            replaced,
        })
    }
}

/// Removes link pins of interfaces that no longer exist (same index and name) in the
/// calling thread's network namespace, and pins whose name is not ours.
fn remove_stale_link_pins(bpffs: &Path, present: &[Interface]) -> Result<usize, DataplaneError> {
    let dir = pin::links_dir(bpffs);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(DataplaneError::io("reading", dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| DataplaneError::io("reading", &dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let alive = parse_link_pin_name(&name).is_some_and(|(ifindex, ifname, _)| {
            present
                .iter()
                .any(|i| i.ifindex == ifindex && i.ifname == ifname)
        });
        if !alive {
            let path = entry.path();
            warn!(pin = %path.display(), "removing the pin of a link whose interface is gone");
            fs::remove_file(&path).map_err(|e| DataplaneError::io("unpinning", path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Detaches every pinned link, tc and socket LB (synchronously, even if another process
/// holds the link) and removes its pin. Returns how many were removed.
pub fn detach_all(bpffs: &Path) -> Result<usize, DataplaneError> {
    let sock = super::sock::detach_all(bpffs)?;
    Ok(sock + detach_tc(bpffs)?)
}

/// Detaches every pinned tc link and removes its pin.
fn detach_tc(bpffs: &Path) -> Result<usize, DataplaneError> {
    let dir = pin::links_dir(bpffs);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(DataplaneError::io("reading", dir, e)),
    };
    for entry in entries {
        let path = entry
            .map_err(|e| DataplaneError::io("reading", &dir, e))?
            .path();
        if let Err(e) = link_detach::detach_pinned(&path) {
            // Removing the pin still drops our reference; the kernel detaches it later.
            warn!(pin = %path.display(), error = %e, "explicit detach failed");
        }
    }
    pin::remove_files_in(&dir)
}

/// What `cleanup` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub links: usize,
    pub maps: usize,
}

/// Detaches everything, unpins every map and removes the folder (and its `maps/` and
/// `links/` subfolders). A folder that does not exist is already clean.
pub fn cleanup(bpffs: &Path) -> Result<Cleaned, DataplaneError> {
    let links = detach_all(bpffs)?;
    let maps = pin::unpin_maps(bpffs)?;
    for dir in [
        pin::links_dir(bpffs),
        super::sock::links_dir(bpffs),
        pin::maps_dir(bpffs),
        bpffs.to_path_buf(),
    ] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataplaneError::io("removing", dir, e)),
        }
    }
    info!(bpffs = %bpffs.display(), links, maps, "cleaned up");
    Ok(Cleaned { links, maps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        for hook in Hook::TC {
            for ifname in ["eth0", "veth-a-b", "x"] {
                let name = link_pin_name(42, ifname, hook);
                assert_eq!(
                    parse_link_pin_name(&name),
                    Some((42, ifname, hook)),
                    "{name}"
                );
            }
        }
        assert_eq!(parse_link_pin_name("eth0-from_pod"), None);
        assert_eq!(parse_link_pin_name("3--from_pod"), None);
        assert_eq!(parse_link_pin_name("3-eth0-sideways"), None);
    }

    #[test]
    fn directions() {
        assert_eq!(attach_type(Hook::FromPod), TcAttachType::Ingress);
        assert_eq!(attach_type(Hook::ToNet), TcAttachType::Egress);
    }
}
