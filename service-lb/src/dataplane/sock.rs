//! Socket LB programs (cgroup sock_addr): loading, attaching to the `--cgroup` folder with
//! links pinned under `<bpffs>/sock-links/<cgroup id>-<program>`, replacing the program in
//! a pinned link on restart (`BPF_LINK_UPDATE`, no gap), and detaching.
//!
//! The cgroup id (the folder's inode number on cgroup v2) is part of the pin name: a run
//! with another `--cgroup` detaches the links of the old folder.

use std::{
    fs, io,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::FdLink, CgroupAttachMode, CgroupSock, CgroupSockAddr},
    Ebpf,
};
use tracing::{info, warn};

use super::{error::DataplaneError, link_detach, loader::Dataplane};

/// Every socket program of the object, by function name.
pub const PROGRAMS: [&str; 8] = [
    "sock_connect4",
    "sock_connect6",
    "sock_sendmsg4",
    "sock_sendmsg6",
    "sock_recvmsg4",
    "sock_recvmsg6",
    "sock_getpeername4",
    "sock_getpeername6",
];

/// The `cgroup/sock_release` program (a cgroup sock program, not sock_addr): deletes a
/// closed connected socket's reverse entry.
pub const RELEASE_PROGRAM: &str = "sock_release";

/// Every socket program: the sock_addr ones, then the release one.
pub fn all_programs() -> impl Iterator<Item = &'static str> {
    PROGRAMS.into_iter().chain([RELEASE_PROGRAM])
}

/// `<bpffs>/sock-links`.
pub fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("sock-links")
}

/// Pin name of a socket link: `<cgroup id>-<program>`.
pub fn link_pin_name(cgroup_id: u64, program: &str) -> String {
    format!("{cgroup_id}-{program}")
}

/// One socket program attached to the cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockAttachment {
    pub program: &'static str,
    pub cgroup: PathBuf,
    pub pinned_at: PathBuf,
    /// The link existed (pinned by an earlier run) and only its program was replaced.
    pub replaced: bool,
}

pub(crate) fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    for name in PROGRAMS {
        program(ebpf, name)?
            .load()
            .map_err(|source| DataplaneError::Program {
                program: name,
                what: "loading into the kernel",
                source,
            })?;
    }
    release_program(ebpf)?
        .load()
        .map_err(|source| DataplaneError::Program {
            program: RELEASE_PROGRAM,
            what: "loading into the kernel",
            source,
        })?;
    Ok(())
}

fn release_program(ebpf: &mut Ebpf) -> Result<&mut CgroupSock, DataplaneError> {
    ebpf.program_mut(RELEASE_PROGRAM)
        .ok_or(DataplaneError::MissingProgram(RELEASE_PROGRAM))?
        .try_into()
        .map_err(|source| DataplaneError::Program {
            program: RELEASE_PROGRAM,
            what: "is not a cgroup sock program",
            source,
        })
}

/// Attaches program `name` to `folder`; returns its link, not yet pinned.
fn attach_new(
    ebpf: &mut Ebpf,
    name: &'static str,
    folder: &fs::File,
) -> Result<FdLink, Box<dyn std::error::Error + Send + Sync>> {
    if name == RELEASE_PROGRAM {
        let prog = release_program(ebpf)?;
        let id = prog.attach(folder, CgroupAttachMode::Single)?;
        Ok(FdLink::try_from(prog.take_link(id)?)?)
    } else {
        let prog = program(ebpf, name)?;
        let id = prog.attach(folder, CgroupAttachMode::Single)?;
        Ok(FdLink::try_from(prog.take_link(id)?)?)
    }
}

/// The fd of the loaded program `name`, for replacing it in a pinned link.
fn program_fd(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<aya::programs::ProgramFd, Box<dyn std::error::Error + Send + Sync>> {
    Ok(if name == RELEASE_PROGRAM {
        release_program(ebpf)?.fd()?.try_clone()?
    } else {
        program(ebpf, name)?.fd()?.try_clone()?
    })
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DataplaneError::Program {
            program: name,
            what: "is not a cgroup sock_addr program",
            source,
        })
}

/// `statfs.f_type` of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// `cgroup` is a folder of a cgroup v2 hierarchy (on a hybrid host `/sys/fs/cgroup` is a
/// tmpfs and the v2 hierarchy is elsewhere, e.g. `/sys/fs/cgroup/unified`).
fn ensure_cgroup2(cgroup: &Path) -> Result<(), DataplaneError> {
    let stat = nix::sys::statfs::statfs(cgroup).map_err(|errno| {
        DataplaneError::io(
            "statfs of the cgroup folder",
            cgroup,
            io::Error::from(errno),
        )
    })?;
    // `f_type` is a c_long on glibc and musl alike; widen for the comparison.
    #[allow(clippy::unnecessary_cast)]
    let found = stat.filesystem_type().0 as i64;
    if found != CGROUP2_SUPER_MAGIC {
        return Err(DataplaneError::io(
            "--cgroup must be a cgroup v2 folder:",
            cgroup,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("filesystem magic {found:#x}"),
            ),
        ));
    }
    Ok(())
}

/// The cgroup v2 id of a folder (its inode number).
pub fn cgroup_id(cgroup: &Path) -> Result<u64, DataplaneError> {
    fs::metadata(cgroup)
        .map(|m| m.ino())
        .map_err(|e| DataplaneError::io("reading the cgroup folder", cgroup, e))
}

impl Dataplane {
    /// Attaches every socket program to the cgroup v2 folder `cgroup` (its processes and
    /// those of its descendants), pinning each link; a link pinned by an earlier run on
    /// the same folder gets its program replaced; links of another folder are detached.
    pub fn attach_sock(&mut self, cgroup: &Path) -> Result<Vec<SockAttachment>, DataplaneError> {
        ensure_cgroup2(cgroup)?;
        let id = cgroup_id(cgroup)?;
        let dir = links_dir(&self.bpffs);
        fs::create_dir_all(&dir).map_err(|e| DataplaneError::io("creating", dir.clone(), e))?;
        let prefix = format!("{id}-");
        detach_where(&self.bpffs, |name| !name.starts_with(&prefix))?;
        let folder = fs::File::open(cgroup)
            .map_err(|e| DataplaneError::io("opening the cgroup folder", cgroup, e))?;
        let mut done = Vec::new();
        for name in all_programs() {
            let pinned_at = dir.join(link_pin_name(id, name));
            let err = |what: &'static str| {
                let cgroup = cgroup.to_path_buf();
                move |source: Box<dyn std::error::Error + Send + Sync>| DataplaneError::SockAttach {
                    program: name,
                    cgroup,
                    what,
                    source,
                }
            };
            let replaced = if pinned_at.exists() {
                let fd = program_fd(&mut self.ebpf, name).map_err(err("reading the program fd"))?;
                link_detach::update_pinned(&pinned_at, fd.as_fd())
                    .map_err(|e| err("replacing the program in the pinned link")(e.into()))?;
                true
            } else {
                let fd_link =
                    attach_new(&mut self.ebpf, name, &folder).map_err(err("attaching"))?;
                fd_link
                    .pin(&pinned_at)
                    .map_err(|e| err("pinning the link")(e.into()))?;
                false
            };
            info!(program = name, cgroup = %cgroup.display(), replaced, "socket LB attached");
            done.push(SockAttachment {
                program: name,
                cgroup: cgroup.to_path_buf(),
                pinned_at,
                replaced,
            });
        }
        Ok(done)
    }
}

/// Detaches (synchronously) and unpins every socket link; returns how many.
pub fn detach_all(bpffs: &Path) -> Result<usize, DataplaneError> {
    detach_where(bpffs, |_| true)
}

fn detach_where(bpffs: &Path, pick: impl Fn(&str) -> bool) -> Result<usize, DataplaneError> {
    let dir = links_dir(bpffs);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(DataplaneError::io("reading", dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| DataplaneError::io("reading", &dir, e))?;
        if !pick(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        if let Err(e) = link_detach::detach_pinned(&path) {
            // Removing the pin still drops our reference; the kernel detaches it later.
            warn!(pin = %path.display(), error = %e, "explicit detach failed");
        }
        fs::remove_file(&path).map_err(|e| DataplaneError::io("unpinning", path, e))?;
        removed += 1;
    }
    Ok(removed)
}

/// `SO_NETNS_COOKIE` of the calling thread's network namespace (what
/// `bpf_get_netns_cookie` returns for its sockets).
pub fn current_netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a live socket fd; `cookie` and `len` are valid for the kernel to write.
    let ret = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// One entry of the socket reverse maps (`inspect sockets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevRecord {
    pub cookie: u64,
    pub backend: std::net::SocketAddr,
    pub service_id: u32,
    pub frontend: std::net::SocketAddr,
}

/// Every entry of both socket reverse maps, read from their pins, sorted by cookie.
pub fn reverse_entries(bpffs: &Path) -> Result<Vec<SockRevRecord>, DataplaneError> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use service_lb_common::{
        maps,
        sock::{SockRev4Key, SockRev4Value, SockRev6Key, SockRev6Value},
    };

    use super::bpf_maps::open_hash;

    let mut out = Vec::new();
    let rev4 = open_hash::<SockRev4Key, SockRev4Value>(bpffs, maps::SOCK_REV4)?;
    for entry in rev4.iter() {
        let (k, v) = entry.map_err(|e| DataplaneError::map(maps::SOCK_REV4, e))?;
        out.push(SockRevRecord {
            cookie: k.cookie,
            backend: SocketAddr::new(Ipv4Addr::from(k.addr).into(), u16::from_be(k.port_be)),
            service_id: v.service_id,
            frontend: SocketAddr::new(Ipv4Addr::from(v.addr).into(), u16::from_be(v.port_be)),
        });
    }
    let rev6 = open_hash::<SockRev6Key, SockRev6Value>(bpffs, maps::SOCK_REV6)?;
    for entry in rev6.iter() {
        let (k, v) = entry.map_err(|e| DataplaneError::map(maps::SOCK_REV6, e))?;
        out.push(SockRevRecord {
            cookie: k.cookie,
            backend: SocketAddr::new(Ipv6Addr::from(k.addr).into(), u16::from_be(k.port_be)),
            service_id: v.service_id,
            frontend: SocketAddr::new(Ipv6Addr::from(v.addr).into(), u16::from_be(v.port_be)),
        });
    }
    out.sort_by_key(|r| (r.cookie, r.backend));
    Ok(out)
}
