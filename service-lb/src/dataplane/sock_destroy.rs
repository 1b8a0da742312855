//! Connected UDP sockets left behind by a backend (issue 10 item 2).
//!
//! The socket LB rewrites a connected UDP socket's destination once, at `connect()`; when
//! that backend stops serving its Service the socket would keep sending to it. Like
//! Cilium, the daemon then destroys such sockets with netlink `SOCK_DESTROY`
//! (sock_diag / INET_DIAG, `CONFIG_INET_DIAG_DESTROY`): the application's next `recv()`
//! fails with `ECONNABORTED`, the socket is disconnected, and a new `connect()` picks a
//! serving backend.
//!
//! Which sockets: connected UDP sockets whose destination is a backend that is no longer
//! serving the Service the socket LB chose it for. The socket reverse maps
//! (`SLB_SKRN4/6_V1`, keyed by socket cookie and backend, valued with the service id) say
//! that a socket was translated and for which Service: a socket the application connected
//! to a pod address itself is never touched.
//!
//! Where: sock_diag sees one network namespace, the one its netlink socket was created
//! in. The daemon's own (the host's) is searched first; while sockets are left to find,
//! every other namespace of the node (`other_netns`: `/proc/<pid>/ns/net` and
//! `/run/netns`, deduplicated) gets a sock_diag socket opened by a short-lived thread
//! that `setns()`s into it (needs CAP_SYS_ADMIN; without it the pods' sockets keep their
//! backend until they reconnect, and a warning says so). Cookies are unique across
//! namespaces, so a socket is only ever matched by its own entry. (With
//! `--socket-lb-hostns-only` pods use the tc path, whose UDP conntrack is flushed.)

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use service_lb_common::{
    maps,
    sock::{SockRev4Key, SockRev4Value, SockRev6Key, SockRev6Value},
};
use tracing::{debug, warn};

use super::{bpf_maps::open_hash, error::DataplaneError};

/// Serving backends (address, target port) per service id, for the UDP frontends to
/// check; a service id with an empty set has no serving backend left.
pub type ServingBackends = BTreeMap<u32, BTreeSet<SocketAddr>>;

/// Destroys the connected UDP sockets whose backend left; a fake in unit tests.
pub trait UdpSocketReaper: Send {
    /// Destroys the sockets connected by the socket LB, for one of the service ids of
    /// `serving`, to a backend not in that id's set. Returns how many were destroyed.
    fn reap(&mut self, serving: &ServingBackends) -> Result<usize, SockDestroyError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SockDestroyError {
    #[error("reading the socket reverse maps: {0}")]
    Maps(#[from] DataplaneError),
    #[error("sock_diag netlink, {what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn netlink_err(what: &'static str) -> impl FnOnce(io::Error) -> SockDestroyError {
    move |source| SockDestroyError::Netlink { what, source }
}

/// The real reaper: the socket reverse maps pinned under `bpffs`, sock_diag in the calling
/// thread's network namespace.
pub struct SockReaper {
    bpffs: PathBuf,
}

impl SockReaper {
    pub fn new(bpffs: PathBuf) -> Self {
        Self { bpffs }
    }

    /// (cookie, backend) of the reverse entries whose backend no longer serves their
    /// service, with the backend as the key holds it (an IPv4 backend of an IPv6 socket
    /// is in the IPv4 map).
    fn doomed(
        &self,
        serving: &ServingBackends,
    ) -> Result<HashSet<(u64, SocketAddr)>, DataplaneError> {
        let gone = |service_id: u32, backend: SocketAddr| {
            serving
                .get(&service_id)
                .is_some_and(|set| !set.contains(&backend))
        };
        let mut doomed = HashSet::new();
        let rev4 = open_hash::<SockRev4Key, SockRev4Value>(&self.bpffs, maps::SOCK_REV4)?;
        for entry in rev4.iter() {
            let (k, v) = entry.map_err(|e| DataplaneError::map(maps::SOCK_REV4, e))?;
            let backend = SocketAddr::new(Ipv4Addr::from(k.addr).into(), u16::from_be(k.port_be));
            if gone(v.service_id, backend) {
                doomed.insert((k.cookie, backend));
            }
        }
        let rev6 = open_hash::<SockRev6Key, SockRev6Value>(&self.bpffs, maps::SOCK_REV6)?;
        for entry in rev6.iter() {
            let (k, v) = entry.map_err(|e| DataplaneError::map(maps::SOCK_REV6, e))?;
            let backend = SocketAddr::new(Ipv6Addr::from(k.addr).into(), u16::from_be(k.port_be));
            if gone(v.service_id, backend) {
                doomed.insert((k.cookie, backend));
            }
        }
        Ok(doomed)
    }

    fn forget(&self, cookie: u64, backend: SocketAddr) {
        let result = match backend.ip() {
            IpAddr::V4(a) => open_hash::<SockRev4Key, SockRev4Value>(&self.bpffs, maps::SOCK_REV4)
                .and_then(|mut m| {
                    m.remove(&SockRev4Key {
                        cookie,
                        addr: a.octets(),
                        port_be: backend.port().to_be(),
                        _pad: [0; 2],
                    })
                    .map_err(|e| DataplaneError::map(maps::SOCK_REV4, e))
                }),
            IpAddr::V6(a) => open_hash::<SockRev6Key, SockRev6Value>(&self.bpffs, maps::SOCK_REV6)
                .and_then(|mut m| {
                    m.remove(&SockRev6Key {
                        cookie,
                        addr: a.octets(),
                        port_be: backend.port().to_be(),
                        _pad: [0; 6],
                    })
                    .map_err(|e| DataplaneError::map(maps::SOCK_REV6, e))
                }),
        };
        if let Err(e) = result {
            debug!(cookie, %backend, error = %e, "socket reverse entry not deleted");
        }
    }
}

impl UdpSocketReaper for SockReaper {
    fn reap(&mut self, serving: &ServingBackends) -> Result<usize, SockDestroyError> {
        if serving.is_empty() {
            return Ok(0);
        }
        let mut doomed = self.doomed(serving)?;
        if doomed.is_empty() {
            return Ok(0);
        }
        // The daemon's own namespace (the host's) first, then the others while sockets
        // are left to find.
        let mut destroyed = self.reap_in(&SockDiag::open()?, &mut doomed)?;
        if doomed.is_empty() {
            return Ok(destroyed);
        }
        let mut unreachable = Vec::new();
        for ns in other_netns() {
            if doomed.is_empty() {
                break;
            }
            match SockDiag::open_in(&ns) {
                Ok(diag) => match self.reap_in(&diag, &mut doomed) {
                    Ok(n) => destroyed += n,
                    Err(e) => unreachable.push((ns, e)),
                },
                Err(e) => unreachable.push((ns, e)),
            }
        }
        if let Some((ns, e)) = unreachable.first() {
            warn!(
                namespaces = unreachable.len(),
                first = %ns.display(),
                error = %e,
                "connected UDP sockets of some network namespaces not searched (setns needs CAP_SYS_ADMIN)"
            );
        }
        Ok(destroyed)
    }
}

impl SockReaper {
    /// Destroys the sockets of `doomed` that `diag`'s namespace holds; removes each one
    /// found from `doomed`.
    fn reap_in(
        &self,
        diag: &SockDiag,
        doomed: &mut HashSet<(u64, SocketAddr)>,
    ) -> Result<usize, SockDestroyError> {
        let mut destroyed = 0;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            for sock in diag.dump_connected_udp(family)? {
                let key = (sock.cookie(), sock.dst());
                if !doomed.remove(&key) {
                    continue;
                }
                match diag.destroy(&sock) {
                    Ok(()) => {
                        destroyed += 1;
                        debug!(cookie = key.0, backend = %key.1, "connected UDP socket destroyed");
                        self.forget(key.0, key.1);
                    }
                    // Closed since the dump.
                    Err(SockDestroyError::Netlink { source, .. })
                        if source.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        warn!(cookie = key.0, backend = %key.1, error = %e, "destroying a connected UDP socket")
                    }
                }
            }
        }
        Ok(destroyed)
    }
}

/// Every network namespace of the node other than the calling thread's, once each (by
/// device and inode): those of processes (`/proc/<pid>/ns/net`; with the host's PID
/// namespace, every pod's) and those pinned under `/run/netns` (where CNIs and container
/// runtimes keep pod namespaces). Unreadable entries (processes that exited) are skipped.
pub fn other_netns() -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let id = |path: &std::path::Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    if let Some(own) = id(std::path::Path::new("/proc/thread-self/ns/net")) {
        seen.insert(own);
    }
    let mut candidates = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        candidates.extend(dir.flatten().map(|e| e.path()));
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        candidates.extend(
            dir.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    candidates
        .into_iter()
        .filter(|p| id(p).is_some_and(|key| seen.insert(key)))
        .collect()
}

// --- sock_diag over raw netlink (no crate for it in our dependency set) ---

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `TCP_ESTABLISHED`: the state of a connected UDP socket.
const STATE_CONNECTED: u32 = 1 << 1;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg` (up to the fields we read).
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// One socket of a dump: its family and raw `inet_diag_sockid`.
struct DiagSock {
    family: u8,
    id: [u8; SOCKID_LEN],
}

impl DiagSock {
    fn cookie(&self) -> u64 {
        let lo = u32::from_ne_bytes([self.id[40], self.id[41], self.id[42], self.id[43]]);
        let hi = u32::from_ne_bytes([self.id[44], self.id[45], self.id[46], self.id[47]]);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// The destination, an IPv4-mapped IPv6 address as IPv4 (as the reverse map keys it).
    fn dst(&self) -> SocketAddr {
        let port = u16::from_be_bytes([self.id[2], self.id[3]]);
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&self.id[20..36]);
        let ip: IpAddr = if self.family == libc::AF_INET as u8 {
            Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()
        } else {
            let v6 = Ipv6Addr::from(raw);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        };
        SocketAddr::new(ip, port)
    }
}

struct SockDiag {
    fd: OwnedFd,
}

impl SockDiag {
    fn open() -> Result<Self, SockDestroyError> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(netlink_err("opening the socket")(io::Error::last_os_error()));
        }
        // SAFETY: a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// A sock_diag socket of the network namespace `ns` (a netns file): opened by a
    /// short-lived thread that enters `ns` (a netlink socket stays in the namespace it
    /// was created in), so no thread of the daemon changes namespace.
    fn open_in(ns: &std::path::Path) -> Result<Self, SockDestroyError> {
        let file = std::fs::File::open(ns).map_err(netlink_err("opening the netns file"))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| netlink_err("entering the netns")(io::Error::from(e)))?;
                    Self::open()
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(netlink_err("entering the netns")(io::Error::other(
                        "the thread panicked",
                    )))
                })
        })
    }

    fn request(kind: u16, flags: u16, family: u8, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + REQ_LEN;
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
        buf.push(family);
        buf.push(libc::IPPROTO_UDP as u8);
        buf.push(0); // idiag_ext
        buf.push(0); // pad
        buf.extend_from_slice(&STATE_CONNECTED.to_ne_bytes());
        buf.extend_from_slice(id);
        buf
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: a live fd; `msg` is valid for `len` bytes. The destination is the
        // kernel (an unbound netlink socket sends to pid 0 by default).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<&'b [u8]> {
        // SAFETY: a live fd; `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(&buf[..n as usize])
    }

    /// Every connected UDP socket of `family` in this network namespace.
    fn dump_connected_udp(&self, family: u8) -> Result<Vec<DiagSock>, SockDestroyError> {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        self.send(&Self::request(
            SOCK_DIAG_BY_FAMILY,
            flags,
            family,
            &[0; SOCKID_LEN],
        ))
        .map_err(netlink_err("sending the dump request"))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let data = self
                .recv(&mut buf)
                .map_err(netlink_err("reading the dump"))?;
            if data.is_empty() {
                return Ok(out);
            }
            for (kind, payload) in messages(data) {
                match kind {
                    k if k == libc::NLMSG_DONE as u16 => return Ok(out),
                    k if k == libc::NLMSG_ERROR as u16 => {
                        let errno = error_of(payload);
                        if errno != 0 {
                            return Err(netlink_err("the dump")(io::Error::from_raw_os_error(
                                errno,
                            )));
                        }
                    }
                    SOCK_DIAG_BY_FAMILY if payload.len() >= MSG_LEN => {
                        let mut id = [0u8; SOCKID_LEN];
                        id.copy_from_slice(&payload[4..4 + SOCKID_LEN]);
                        out.push(DiagSock {
                            family: payload[0],
                            id,
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// `SOCK_DESTROY` of one socket of a dump (found again by its id, cookie checked).
    fn destroy(&self, sock: &DiagSock) -> Result<(), SockDestroyError> {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        self.send(&Self::request(SOCK_DESTROY, flags, sock.family, &sock.id))
            .map_err(netlink_err("sending SOCK_DESTROY"))?;
        let mut buf = vec![0u8; 4096];
        let data = self
            .recv(&mut buf)
            .map_err(netlink_err("reading the ack"))?;
        for (kind, payload) in messages(data) {
            if kind == libc::NLMSG_ERROR as u16 {
                let errno = error_of(payload);
                if errno != 0 {
                    return Err(netlink_err("SOCK_DESTROY")(io::Error::from_raw_os_error(
                        errno,
                    )));
                }
                return Ok(());
            }
        }
        Err(netlink_err("SOCK_DESTROY")(io::Error::new(
            io::ErrorKind::InvalidData,
            "no acknowledgement",
        )))
    }
}

/// The (type, payload) of each netlink message in `data`; stops at a malformed header.
pub(super) fn messages(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        out.push((kind, &data[NLMSG_HDRLEN..len]));
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    out
}

/// The positive errno of an `NLMSG_ERROR` payload (0: an acknowledgement).
pub(super) fn error_of(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .map_or(libc::EIO, |e| e.saturating_neg())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockid(dport: u16, dst: [u8; 16], cookie: u64) -> [u8; SOCKID_LEN] {
        let mut id = [0u8; SOCKID_LEN];
        id[2..4].copy_from_slice(&dport.to_be_bytes());
        id[20..36].copy_from_slice(&dst);
        id[40..44].copy_from_slice(&(cookie as u32).to_ne_bytes());
        id[44..48].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        id
    }

    #[test]
    fn diag_ids_decode_to_cookie_and_destination() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[198, 18, 1, 3]);
        let s = DiagSock {
            family: libc::AF_INET as u8,
            id: sockid(5353, v4, 0x1234_5678_9abc_def0),
        };
        assert_eq!(s.cookie(), 0x1234_5678_9abc_def0);
        assert_eq!(s.dst(), "198.18.1.3:5353".parse().unwrap());
        let mapped: Ipv6Addr = "::ffff:198.18.1.4".parse().unwrap();
        let s = DiagSock {
            family: libc::AF_INET6 as u8,
            id: sockid(53, mapped.octets(), 7),
        };
        assert_eq!(s.dst(), "198.18.1.4:53".parse().unwrap());
        let v6: Ipv6Addr = "fd00:18:0:1::3".parse().unwrap();
        let s = DiagSock {
            family: libc::AF_INET6 as u8,
            id: sockid(53, v6.octets(), 7),
        };
        assert_eq!(s.dst(), "[fd00:18:0:1::3]:53".parse().unwrap());
    }

    #[test]
    fn netlink_messages_split_and_errors_read() {
        let mut data = Vec::new();
        for (kind, payload) in [
            (20u16, vec![1u8, 2, 3]),
            (2, (-2i32).to_ne_bytes().to_vec()),
        ] {
            let len = NLMSG_HDRLEN + payload.len();
            data.extend_from_slice(&(len as u32).to_ne_bytes());
            data.extend_from_slice(&kind.to_ne_bytes());
            data.extend_from_slice(&[0; 10]);
            data.extend_from_slice(&payload);
            data.resize((data.len() + 3) & !3, 0);
        }
        let msgs = messages(&data);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0], (20, &[1u8, 2, 3][..]));
        assert_eq!(error_of(msgs[1].1), libc::ENOENT);
        // A truncated header ends the walk.
        assert_eq!(messages(&data[..10]).len(), 0);
    }
}
