//! A passive capture of the IP packets crossing one interface of a test namespace
//! (`AF_PACKET`, cooked: no link header): addresses, lengths and fragment fields, for
//! tests that check what went over a link (e.g. that every fragment of a reply carries
//! the ClusterIP as its source). Bounded: at most [`MAX_PACKETS`] packets and
//! [`MAX_LIFE`]; the socket lives in the namespace it was opened in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{run_in, NetNs};

/// Packets kept at most.
pub const MAX_PACKETS: usize = 10_000;
/// A capture stops by itself after this long.
pub const MAX_LIFE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_FRAGMENT: u8 = 44;

/// The fragment fields of a packet that is a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Offset of its data in the datagram, in bytes.
    pub offset: u32,
    /// More fragments follow.
    pub more: bool,
    pub id: u32,
}

/// One IP packet seen on the interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Sent by this namespace (else received).
    pub outgoing: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Length of the whole IP packet (header included).
    pub ip_len: usize,
    pub fragment: Option<Fragment>,
}

/// A running capture; [`Capture::finish`] stops it and returns what it saw.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Seen>>>>,
}

impl Capture {
    /// Opens the socket inside `ns`, bound to `dev`, and starts reading it on a thread.
    pub fn start(ns: &NetNs, dev: &str) -> Result<Self> {
        let dev = dev.to_owned();
        let socket = run_in(ns, move || open_socket(&dev))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || read_until(&socket, &flag))
            .context("spawning the capture thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the capture (after one more read timeout) and returns the packets.
    pub fn finish(mut self) -> Result<Vec<Seen>> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().context("capture already finished")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"))?
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open_socket(dev: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(dev).context("interface name")?;
    // SAFETY: a plain syscall with a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("no interface {dev}"));
    }
    // SAFETY: socket(2) with constant arguments; the fd is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
    // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("binding to {dev}"));
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    Ok(fd)
}

fn read_until(fd: &OwnedFd, stop: &AtomicBool) -> Result<Vec<Seen>> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFE {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::from_mut(&mut from).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(e).context("recvfrom(AF_PACKET)"),
            }
        }
        let n = usize::try_from(n).context("length")?;
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        if let Some(packet) = parse(u16::from_be(from.sll_protocol), &buf[..n], outgoing) {
            if seen.len() >= MAX_PACKETS {
                bail!("more than {MAX_PACKETS} packets captured");
            }
            seen.push(packet);
        }
    }
    Ok(seen)
}

/// An IPv4 or IPv6 packet's addresses, length and fragment fields; `None` for anything
/// else or a truncated header.
pub fn parse(ethertype: u16, data: &[u8], outgoing: bool) -> Option<Seen> {
    let be16 = |at: usize| Some(u16::from_be_bytes(data.get(at..at + 2)?.try_into().ok()?));
    match ethertype {
        ETH_P_IP if data.first()? >> 4 == 4 && data.len() >= 20 => {
            let flags = be16(6)?;
            let offset = u32::from(flags & 0x1fff) * 8;
            let more = flags & 0x2000 != 0;
            let src: [u8; 4] = data.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = data.get(16..20)?.try_into().ok()?;
            Some(Seen {
                outgoing,
                src: Ipv4Addr::from(src).into(),
                dst: Ipv4Addr::from(dst).into(),
                ip_len: usize::from(be16(2)?),
                fragment: (more || offset != 0).then_some(Fragment {
                    offset,
                    more,
                    id: u32::from(be16(4)?),
                }),
            })
        }
        ETH_P_IPV6 if data.first()? >> 4 == 6 && data.len() >= 40 => {
            let src: [u8; 16] = data.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = data.get(24..40)?.try_into().ok()?;
            let fragment = if data[6] == IPPROTO_FRAGMENT {
                let field = be16(42)?;
                let id: [u8; 4] = data.get(44..48)?.try_into().ok()?;
                Some(Fragment {
                    offset: u32::from(field >> 3) * 8,
                    more: field & 1 != 0,
                    id: u32::from_be_bytes(id),
                })
            } else {
                None
            };
            Some(Seen {
                outgoing,
                src: Ipv6Addr::from(src).into(),
                dst: Ipv6Addr::from(dst).into(),
                ip_len: 40 + usize::from(be16(4)?),
                fragment,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_fragment_fields() {
        // A middle fragment: MF set, offset 185 * 8 = 1480, id 0x1234, 1500 bytes.
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&1500u16.to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6..8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes());
        p[12..16].copy_from_slice(&[198, 18, 1, 10]);
        p[16..20].copy_from_slice(&[198, 19, 0, 31]);
        let seen = parse(ETH_P_IP, &p, true).expect("parses");
        assert_eq!(seen.ip_len, 1500);
        assert_eq!(seen.src, IpAddr::from([198, 18, 1, 10]));
        assert_eq!(seen.dst, IpAddr::from([198, 19, 0, 31]));
        assert_eq!(
            seen.fragment,
            Some(Fragment {
                offset: 1480,
                more: true,
                id: 0x1234
            })
        );
        // Not a fragment: DF only.
        p[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        assert_eq!(parse(ETH_P_IP, &p, true).expect("parses").fragment, None);
    }

    #[test]
    fn ipv6_fragment_header() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&1064u16.to_be_bytes());
        p[6] = IPPROTO_FRAGMENT;
        // Last fragment at offset 2896 (362 * 8), M clear, id 7.
        p[42..44].copy_from_slice(&(362u16 << 3).to_be_bytes());
        p[44..48].copy_from_slice(&7u32.to_be_bytes());
        let seen = parse(ETH_P_IPV6, &p, false).expect("parses");
        assert_eq!(seen.ip_len, 1104);
        assert_eq!(
            seen.fragment,
            Some(Fragment {
                offset: 2896,
                more: false,
                id: 7
            })
        );
        assert!(parse(ETH_P_IPV6, &p[..30], false).is_none());
        assert!(parse(0x0806, &p, false).is_none());
    }
}
