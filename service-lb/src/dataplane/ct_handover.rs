//! Handing the live flows of our conntrack maps over to netfilter before a roll-back
//! (`service-lb cleanup --handover-conntrack`, issue 13).
//!
//! A flow service-lb translated has its NAT only in our maps: netfilter's conntrack in the
//! node saw the packets after our DNAT (client -> backend), so once the programs are gone
//! the client's next segment (client -> ClusterIP) is a new flow to netfilter and breaks
//! the connection. Before detaching, every live flow of ours becomes a netfilter
//! conntrack entry with the same NAT, created through ctnetlink as `conntrack -I
//! --dst-nat` does (`IPCTNL_MSG_CT_NEW`, kernel `ctnetlink_create_conntrack`):
//!
//! - `CTA_TUPLE_ORIG` client -> frontend, `CTA_TUPLE_REPLY` its inverse: the kernel computes
//!   the NATed reply tuple (backend -> client) itself from `CTA_NAT_DST` (backend address
//!   and port, `nf_nat_setup_info`), which also sets `IPS_DST_NAT`; the NAT status bits
//!   cannot be set through `CTA_STATUS` (`IPS_UNCHANGEABLE_MASK`).
//! - a flow whose client port we rewrote (`CT_FLAG_PORT_NAT`) gets `CTA_NAT_SRC` with the
//!   port on the wire;
//! - `CTA_STATUS` `IPS_SEEN_REPLY | IPS_ASSURED` plus the bits the kernel has already set
//!   by then (`IPS_CONFIRMED`, the NAT ones): clearing one is refused with EBUSY,
//!   `CTA_TIMEOUT` the entry's remaining lifetime, TCP `CTA_PROTOINFO` state ESTABLISHED
//!   with window tracking liberal in both directions (the windows were never seen).
//!
//! Netfilter's own entry of each flow (client -> backend: it saw the packets after our
//! DNAT) holds the same reply tuple, so it is deleted first. UDP flows are handed over
//! first, then the TCP ones (held back meanwhile, see `freeze`), then the programs go.
//!
//! Which flows: forward (`CT_DIR_SERVICE`) entries that have not expired, TCP established
//! and UDP (any live entry), with a known backend. Not handed over (counted): closing or
//! half-closed TCP, hairpin flows (their source NAT address is the node's hairpin address),
//! direct flows (no service NAT), flows whose backend left, other protocols.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use service_lb_common::{
    conntrack::{
        tcp_state, CT_DIR_SERVICE, CT_FLAG_BACKEND_GONE, CT_FLAG_DIRECT, CT_FLAG_HAIRPIN,
        CT_FLAG_PORT_NAT, CT_FLAG_SEEN_REPLY, CT_STATE_ESTABLISHED,
    },
    maps, Backend4, Backend6, CtEntry, CtKey4, CtKey6,
};

use super::{
    bpf_maps::{open_hash, BpfMaps, CtRecord},
    clock,
    error::DataplaneError,
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One flow to hand over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoverFlow {
    pub proto: u8,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    /// The client's port after our programs (differs from `client`'s with
    /// `CT_FLAG_PORT_NAT`): netfilter's own entry of the flow has it as source.
    pub wire_port: u16,
    /// The client port the backend sees and answers to: `wire_port`, unless netfilter
    /// moved it (`Ctnetlink::netfilter_wire_port`).
    pub reply_port: u16,
    /// Seconds left, at least 1.
    pub timeout_s: u32,
    /// A reply was seen (always for established TCP).
    pub seen_reply: bool,
}

impl HandoverFlow {
    pub fn proto_name(&self) -> &'static str {
        match self.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "other",
        }
    }
}

/// The flows to hand over and, per reason, how many live entries were left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub flows: Vec<HandoverFlow>,
    pub skipped: BTreeMap<&'static str, usize>,
}

/// Picks the flows to hand over from the conntrack records; `backend` resolves a backend
/// id of the record's family.
pub fn select(
    records: &[CtRecord],
    now_ns: u64,
    backend: impl Fn(bool, u32) -> Option<SocketAddr>,
) -> Selection {
    let mut sel = Selection::default();
    for r in records {
        if r.dir != CT_DIR_SERVICE || r.entry.expires_ns <= now_ns {
            continue;
        }
        let flags = r.entry.flags;
        let skip = if flags & CT_FLAG_DIRECT != 0 {
            Some("direct flow (no service NAT)")
        } else if flags & CT_FLAG_HAIRPIN != 0 {
            Some("hairpin flow")
        } else if flags & CT_FLAG_BACKEND_GONE != 0 {
            Some("backend gone")
        } else if r.proto == IPPROTO_TCP && tcp_state(flags) != CT_STATE_ESTABLISHED {
            Some("tcp not established")
        } else if r.proto != IPPROTO_TCP && r.proto != IPPROTO_UDP {
            Some("protocol")
        } else {
            None
        };
        if let Some(why) = skip {
            *sel.skipped.entry(why).or_default() += 1;
            continue;
        }
        let Some(backend) = backend(r.saddr.is_ipv6(), r.entry.backend_id) else {
            *sel.skipped.entry("backend unknown").or_default() += 1;
            continue;
        };
        let wire_port = if flags & CT_FLAG_PORT_NAT != 0 && r.entry.nat_port_be != 0 {
            u16::from_be(r.entry.nat_port_be)
        } else {
            r.sport
        };
        let left_s = (r.entry.expires_ns - now_ns).div_ceil(1_000_000_000);
        sel.flows.push(HandoverFlow {
            proto: r.proto,
            client: SocketAddr::new(r.saddr, r.sport),
            frontend: SocketAddr::new(r.daddr, r.dport),
            backend,
            wire_port,
            reply_port: wire_port,
            timeout_s: u32::try_from(left_s).unwrap_or(u32::MAX).max(1),
            seen_reply: flags & CT_FLAG_SEEN_REPLY != 0,
        });
    }
    sel
}

/// The flows to hand over from the maps pinned under `bpffs`.
pub fn live_flows(bpffs: &Path) -> Result<Selection, DataplaneError> {
    let maps = BpfMaps::open_pinned(bpffs)?;
    let records = maps.conntrack()?;
    let be4 = open_hash::<u32, Backend4>(bpffs, maps::BACKENDS4)?;
    let be6 = open_hash::<u32, Backend6>(bpffs, maps::BACKENDS6)?;
    let now = clock::boottime_ns().map_err(|e| DataplaneError::Io {
        what: "reading CLOCK_BOOTTIME for",
        path: bpffs.to_path_buf(),
        source: e.into(),
    })?;
    Ok(select(&records, now, |v6, id| {
        if v6 {
            be6.get(&id, 0)
                .ok()
                .map(|b| SocketAddr::new(Ipv6Addr::from(b.addr).into(), u16::from_be(b.port_be)))
        } else {
            be4.get(&id, 0)
                .ok()
                .map(|b| SocketAddr::new(Ipv4Addr::from(b.addr).into(), u16::from_be(b.port_be)))
        }
    }))
}

/// Marks the forward entries of the TCP flows of `flows` `CT_FLAG_BACKEND_GONE`: until
/// the programs are detached, the clients' packets of these flows are dropped (counted
/// `drop_backend_gone`) instead of translated. Call it just before handing the TCP flows
/// over and detach right after: the drops last that long (TCP retransmits). UDP flows are
/// not held back: a datagram DNATed in between starts a netfilter flow whose source port
/// netfilter moves, and its answer still comes back through that flow and our reverse
/// NAT; holding them would also drop new queries that reuse a held flow's port. Without
/// this, a TCP segment our program DNATs
/// after netfilter's entry was replaced would start a new netfilter flow whose reply
/// tuple clashes with the handed-over one; netfilter would then move its source port, the
/// backend would answer with a RST, and our reverse NAT would deliver that RST to the
/// client. The dropped segments are retransmitted after the detach and meet the
/// handed-over entry. Returns how many entries were marked (a flow may have ended).
pub fn freeze(bpffs: &Path, flows: &[HandoverFlow]) -> Result<usize, DataplaneError> {
    fn mark<K: aya::Pod>(bpffs: &Path, name: &'static str, key: K) -> Result<bool, DataplaneError> {
        let mut map = open_hash::<K, CtEntry>(bpffs, name)?;
        let Ok(mut entry) = map.get(&key, 0) else {
            return Ok(false);
        };
        entry.flags |= CT_FLAG_BACKEND_GONE;
        // BPF_EXIST: an entry that ended meanwhile is not written back.
        Ok(map.insert(key, entry, 2).is_ok())
    }
    let mut marked = 0;
    for f in flows.iter().filter(|f| f.proto == IPPROTO_TCP) {
        let done = match (f.client.ip(), f.frontend.ip()) {
            (IpAddr::V4(c), IpAddr::V4(v)) => mark(
                bpffs,
                maps::CT4_TCP,
                CtKey4::new(
                    c.octets(),
                    v.octets(),
                    f.client.port().to_be(),
                    f.frontend.port().to_be(),
                    f.proto,
                    CT_DIR_SERVICE,
                ),
            )?,
            (c, v) => mark(
                bpffs,
                maps::CT6_TCP,
                CtKey6::new(
                    v6(c).octets(),
                    v6(v).octets(),
                    f.client.port().to_be(),
                    f.frontend.port().to_be(),
                    f.proto,
                    CT_DIR_SERVICE,
                ),
            )?,
        };
        marked += usize::from(done);
    }
    Ok(marked)
}

// --- ctnetlink (include/uapi/linux/netfilter/nfnetlink_conntrack.h) ---

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_NAT_SRC: u16 = 6;
const CTA_TIMEOUT: u16 = 7;
const CTA_NAT_DST: u16 = 13;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;

const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_V6_MAXIP: u16 = 5;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;

const IPS_SEEN_REPLY: u32 = 1 << 1;
const IPS_ASSURED: u32 = 1 << 2;
const IPS_CONFIRMED: u32 = 1 << 3;
const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_DST_NAT: u32 = 1 << 5;

/// A netlink message under construction (attributes in host order headers, payloads as
/// the kernel wants them).
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16, family: u8) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `finish`
        buf.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | kind).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
                                                    // struct nfgenmsg: family, NFNETLINK_V0, res_id (be16)
        buf.extend_from_slice(&[family, 0, 0, 0]);
        Self { buf }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self
    }

    fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Self)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn tuple(&mut self, kind: u16, proto: u8, src: SocketAddr, dst: SocketAddr) -> &mut Self {
        self.nest(kind, |m| {
            m.nest(CTA_TUPLE_IP, |m| match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    m.attr(CTA_IP_V4_SRC, &s.octets())
                        .attr(CTA_IP_V4_DST, &d.octets());
                }
                (s, d) => {
                    m.attr(CTA_IP_V6_SRC, &v6(s).octets())
                        .attr(CTA_IP_V6_DST, &v6(d).octets());
                }
            });
            m.nest(CTA_TUPLE_PROTO, |m| {
                m.attr(CTA_PROTO_NUM, &[proto])
                    .attr(CTA_PROTO_SRC_PORT, &src.port().to_be_bytes())
                    .attr(CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
            });
        })
    }

    /// A NAT range of one address and one port.
    fn nat(&mut self, kind: u16, to: SocketAddr) -> &mut Self {
        self.nest(kind, |m| {
            match to.ip() {
                IpAddr::V4(a) => {
                    m.attr(CTA_NAT_V4_MINIP, &a.octets())
                        .attr(CTA_NAT_V4_MAXIP, &a.octets());
                }
                IpAddr::V6(a) => {
                    m.attr(CTA_NAT_V6_MINIP, &a.octets())
                        .attr(CTA_NAT_V6_MAXIP, &a.octets());
                }
            }
            m.nest(CTA_NAT_PROTO, |m| {
                m.attr(CTA_PROTONAT_PORT_MIN, &to.port().to_be_bytes())
                    .attr(CTA_PROTONAT_PORT_MAX, &to.port().to_be_bytes());
            });
        })
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

fn family(flow: &HandoverFlow) -> u8 {
    if flow.client.is_ipv6() {
        libc::AF_INET6 as u8
    } else {
        libc::AF_INET as u8
    }
}

/// `IPCTNL_MSG_CT_NEW` creating the NATed entry of `flow`.
fn encode_new(flow: &HandoverFlow) -> Vec<u8> {
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut m = Msg::new(IPCTNL_MSG_CT_NEW, flags, family(flow));
    m.tuple(CTA_TUPLE_ORIG, flow.proto, flow.client, flow.frontend)
        .tuple(CTA_TUPLE_REPLY, flow.proto, flow.frontend, flow.client)
        .nat(CTA_NAT_DST, flow.backend);
    // `ctnetlink_change_status` answers EBUSY when the status would clear a bit the entry
    // already has: the kernel sets IPS_CONFIRMED before reading it, and the NAT bits
    // during the NAT set-up (NAT bits in CTA_STATUS are otherwise ignored).
    let mut status = IPS_CONFIRMED | IPS_DST_NAT;
    if flow.reply_port != flow.client.port() {
        m.nat(
            CTA_NAT_SRC,
            SocketAddr::new(flow.client.ip(), flow.reply_port),
        );
        status |= IPS_SRC_NAT;
    }
    if flow.seen_reply {
        status |= IPS_SEEN_REPLY | IPS_ASSURED;
    }
    m.attr(CTA_STATUS, &status.to_be_bytes())
        .attr(CTA_TIMEOUT, &flow.timeout_s.to_be_bytes());
    if flow.proto == IPPROTO_TCP {
        // struct nf_ct_tcp_flags { flags, mask }
        let liberal = [IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL];
        m.nest(CTA_PROTOINFO, |m| {
            m.nest(CTA_PROTOINFO_TCP, |m| {
                m.attr(CTA_PROTOINFO_TCP_STATE, &[TCP_CONNTRACK_ESTABLISHED])
                    .attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &liberal)
                    .attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &liberal);
            });
        });
    }
    m.finish()
}

/// `IPCTNL_MSG_CT_GET` of the entry holding `src -> dst`.
fn encode_get(proto: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let fam = if src.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    } as u8;
    let mut m = Msg::new(IPCTNL_MSG_CT_GET, libc::NLM_F_REQUEST as u16, fam);
    m.tuple(CTA_TUPLE_ORIG, proto, src, dst);
    m.finish()
}

/// The attributes (type without flags, payload) of a netlink attribute stream.
fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    out
}

/// The destination port of the reply tuple of a conntrack message's payload (after the
/// netlink header): where netfilter sends the replies of the flow.
fn reply_dst_port(payload: &[u8]) -> Option<u16> {
    let (_, reply) = attrs(payload.get(4..)?)
        .into_iter()
        .find(|(k, _)| *k == CTA_TUPLE_REPLY)?;
    let (_, proto) = attrs(reply)
        .into_iter()
        .find(|(k, _)| *k == CTA_TUPLE_PROTO)?;
    let (_, port) = attrs(proto)
        .into_iter()
        .find(|(k, _)| *k == CTA_PROTO_DST_PORT)?;
    Some(u16::from_be_bytes([*port.first()?, *port.get(1)?]))
}

/// `IPCTNL_MSG_CT_DELETE` of the entry holding `src -> dst` in either direction.
fn encode_delete(proto: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    let fam = if src.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    } as u8;
    let mut m = Msg::new(IPCTNL_MSG_CT_DELETE, flags, fam);
    m.tuple(CTA_TUPLE_ORIG, proto, src, dst);
    m.finish()
}

#[derive(Debug, thiserror::Error)]
#[error("ctnetlink, {what}: {source}")]
pub struct CtnetlinkError {
    what: &'static str,
    #[source]
    source: io::Error,
}

impl CtnetlinkError {
    /// The errno the kernel answered, if it did.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// A ctnetlink socket in the calling thread's network namespace.
pub struct Ctnetlink {
    fd: OwnedFd,
}

impl Ctnetlink {
    pub fn open() -> Result<Self, CtnetlinkError> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(CtnetlinkError {
                what: "opening the socket",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: a new fd nothing else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// Sends one request and reads its acknowledgement.
    fn request(&self, what: &'static str, msg: &[u8]) -> Result<(), CtnetlinkError> {
        let err = |source| CtnetlinkError { what, source };
        // SAFETY: a live fd; `msg` is valid for its length; the destination is the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let mut buf = [0u8; 4096];
        // SAFETY: a live fd; `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        for (kind, payload) in super::sock_destroy::messages(&buf[..n as usize]) {
            if kind == libc::NLMSG_ERROR as u16 {
                return match super::sock_destroy::error_of(payload) {
                    0 => Ok(()),
                    errno => Err(err(io::Error::from_raw_os_error(errno))),
                };
            }
        }
        Err(err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no acknowledgement",
        )))
    }

    /// The client port netfilter's own entry of `flow` (client -> backend, seen after our
    /// DNAT) uses on the wire, when it has one: netfilter moves a flow's source port when
    /// its reply tuple clashes with an older entry (e.g. one kube-proxy's rules made from
    /// the same client port to the same backend), and the backend knows the connection
    /// by that port.
    pub fn netfilter_wire_port(&self, flow: &HandoverFlow) -> Option<u16> {
        let wire_client = SocketAddr::new(flow.client.ip(), flow.wire_port);
        let msg = encode_get(flow.proto, wire_client, flow.backend);
        // SAFETY: a live fd; `msg` is valid for its length; the destination is the kernel.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return None;
        }
        let mut buf = [0u8; 8192];
        // SAFETY: a live fd; `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return None;
        }
        let mut port = None;
        for (kind, payload) in super::sock_destroy::messages(&buf[..n as usize]) {
            if kind == NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW {
                port = reply_dst_port(payload);
            }
        }
        port
    }

    /// Deletes every entry holding `src -> dst` (either direction); returns how many.
    fn delete_all(
        &self,
        proto: u8,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<usize, CtnetlinkError> {
        let msg = encode_delete(proto, src, dst);
        for n in 0..4 {
            match self.request("deleting netfilter's entry", &msg) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
        Ok(4)
    }

    /// Replaces netfilter's entries of `flow` with one that NATs it as we did. Returns how
    /// many of netfilter's entries were deleted.
    pub fn hand_over(&self, flow: &HandoverFlow) -> Result<usize, CtnetlinkError> {
        let wire_client = SocketAddr::new(flow.client.ip(), flow.wire_port);
        let mut flow = *flow;
        if let Some(port) = self.netfilter_wire_port(&flow) {
            flow.reply_port = port;
        }
        let new = encode_new(&flow);
        let mut deleted = 0;
        // Packets still pass our programs meanwhile: netfilter may track the flow again
        // between the delete and the create (EEXIST); a few rounds, then the error.
        for round in 0..3 {
            deleted += self.delete_all(flow.proto, wire_client, flow.backend)?;
            if round > 0 {
                // Netfilter normally never sees client -> frontend (our DNAT comes first),
                // but a clash says something holds it.
                deleted += self.delete_all(flow.proto, flow.client, flow.frontend)?;
            }
            match self.request("creating the NATed entry", &new) {
                Ok(()) => return Ok(deleted),
                Err(e) if e.errno() == Some(libc::EEXIST) && round < 2 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

/// What a hand-over did.
#[derive(Debug, Default)]
pub struct HandoverReport {
    pub handed_over: usize,
    pub replaced: usize,
    pub failed: Vec<(HandoverFlow, CtnetlinkError)>,
}

/// Hands every flow over, in the calling thread's network namespace; a flow that fails is
/// reported and the others go on.
pub fn hand_over(flows: &[HandoverFlow]) -> Result<HandoverReport, CtnetlinkError> {
    let nl = Ctnetlink::open()?;
    let mut report = HandoverReport::default();
    for flow in flows {
        match nl.hand_over(flow) {
            Ok(deleted) => {
                report.handed_over += 1;
                report.replaced += deleted;
            }
            Err(e) => report.failed.push((*flow, e)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use service_lb_common::{
        conntrack::{CT_DIR_REPLY, CT_FLAG_CLOSING, CT_FLAG_FIN_CLIENT},
        CtEntry,
    };

    use super::*;
    use crate::dataplane::CtTable;

    const NOW: u64 = 1_000_000_000_000;

    fn record(proto: u8, flags: u16, expires_in_ns: u64) -> CtRecord {
        CtRecord {
            table: if proto == 6 {
                CtTable::Tcp
            } else {
                CtTable::Any
            },
            saddr: "198.18.1.2".parse().unwrap(),
            daddr: "198.19.0.10".parse().unwrap(),
            sport: 40000,
            dport: 80,
            proto,
            dir: CT_DIR_SERVICE,
            entry: CtEntry {
                expires_ns: NOW + expires_in_ns,
                backend_id: 7,
                service_id: 3,
                flags,
                state: 0,
                _pad0: 0,
                nat_port_be: 0,
                _pad: [0; 2],
            },
        }
    }

    fn backend(v6: bool, id: u32) -> Option<SocketAddr> {
        (id == 7 && !v6).then(|| "198.18.1.3:8080".parse().unwrap())
    }

    #[test]
    fn selects_live_established_service_flows_only() {
        let s = 1_000_000_000;
        let mut port_nat = record(6, CT_FLAG_SEEN_REPLY | CT_FLAG_PORT_NAT, 10 * s);
        port_nat.entry.nat_port_be = 40001u16.to_be();
        let mut reply = record(6, CT_FLAG_SEEN_REPLY, 10 * s);
        reply.dir = CT_DIR_REPLY;
        let mut unknown = record(17, 0, s);
        unknown.entry.backend_id = 9;
        let records = [
            record(6, CT_FLAG_SEEN_REPLY, 3 * s + 1), // established: 4 s left, rounded up
            port_nat,
            record(17, 0, s / 2), // UDP without a reply yet: still live
            reply,
            record(6, CT_FLAG_SEEN_REPLY, 0), // expired
            record(6, 0, 10 * s),             // SYN only
            record(6, CT_FLAG_SEEN_REPLY | CT_FLAG_FIN_CLIENT, s), // half-closed
            record(6, CT_FLAG_SEEN_REPLY | CT_FLAG_CLOSING, s),
            record(6, CT_FLAG_SEEN_REPLY | CT_FLAG_HAIRPIN, s),
            record(6, CT_FLAG_SEEN_REPLY | CT_FLAG_DIRECT | CT_FLAG_PORT_NAT, s),
            record(6, CT_FLAG_SEEN_REPLY | CT_FLAG_BACKEND_GONE, s),
            record(132, CT_FLAG_SEEN_REPLY, s),
            unknown,
        ];
        let sel = select(&records, NOW, backend);
        let client: SocketAddr = "198.18.1.2:40000".parse().unwrap();
        let frontend: SocketAddr = "198.19.0.10:80".parse().unwrap();
        let be: SocketAddr = "198.18.1.3:8080".parse().unwrap();
        let flow = |proto, wire_port, timeout_s, seen_reply| HandoverFlow {
            proto,
            client,
            frontend,
            backend: be,
            wire_port,
            reply_port: wire_port,
            timeout_s,
            seen_reply,
        };
        assert_eq!(
            sel.flows,
            vec![
                flow(6, 40000, 4, true),
                flow(6, 40001, 10, true),
                flow(17, 40000, 1, false),
            ]
        );
        let skipped: Vec<_> = sel.skipped.into_iter().collect();
        assert_eq!(
            skipped,
            vec![
                ("backend gone", 1),
                ("backend unknown", 1),
                ("direct flow (no service NAT)", 1),
                ("hairpin flow", 1),
                ("protocol", 1),
                ("tcp not established", 3),
            ]
        );
    }

    /// One netlink attribute, written out by hand from the uapi layout.
    fn nla(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(data);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let mut v = ((4 + body.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&(kind | 0x8000).to_ne_bytes());
        v.extend_from_slice(&body);
        v
    }

    fn tuple4(kind: u16, proto: u8, s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> Vec<u8> {
        nested(
            kind,
            &[
                nested(1, &[nla(1, &s), nla(2, &d)]),
                nested(
                    2,
                    &[
                        nla(1, &[proto]),
                        nla(2, &sp.to_be_bytes()),
                        nla(3, &dp.to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    #[test]
    fn new_entry_message_matches_the_uapi_layout() {
        let flow = HandoverFlow {
            proto: 6,
            client: "198.18.1.2:40000".parse().unwrap(),
            frontend: "198.19.0.10:80".parse().unwrap(),
            backend: "198.18.1.3:8080".parse().unwrap(),
            wire_port: 40001,
            reply_port: 40001,
            timeout_s: 300,
            seen_reply: true,
        };
        let (c, f, b) = ([198, 18, 1, 2], [198, 19, 0, 10], [198, 18, 1, 3]);
        let nat = |kind, ip: [u8; 4], port: u16| {
            nested(
                kind,
                &[
                    nla(1, &ip),
                    nla(2, &ip),
                    nested(
                        3,
                        &[nla(1, &port.to_be_bytes()), nla(2, &port.to_be_bytes())],
                    ),
                ],
            )
        };
        let body = [
            tuple4(1, 6, c, 40000, f, 80),
            tuple4(2, 6, f, 80, c, 40000),
            nat(13, b, 8080),
            nat(6, c, 40001),
            // IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED | IPS_SRC_NAT | IPS_DST_NAT
            nla(3, &0x3eu32.to_be_bytes()),
            nla(7, &300u32.to_be_bytes()),
            nested(
                4,
                &[nested(1, &[nla(1, &[3]), nla(4, &[8, 8]), nla(5, &[8, 8])])],
            ),
        ]
        .concat();
        let mut want = ((16 + 4 + body.len()) as u32).to_ne_bytes().to_vec();
        want.extend_from_slice(&0x0100u16.to_ne_bytes()); // CTNETLINK << 8 | CT_NEW
        want.extend_from_slice(&0x0605u16.to_ne_bytes()); // REQUEST|ACK|EXCL|CREATE
        want.extend_from_slice(&1u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 0, 0, 0]); // AF_INET, v0, res_id 0
        want.extend_from_slice(&body);
        assert_eq!(encode_new(&flow), want);
    }

    #[test]
    fn delete_message_names_one_tuple() {
        let m = encode_delete(
            17,
            "[fd00:18:0:1::2]:5000".parse().unwrap(),
            "[fd00:19::10]:53".parse().unwrap(),
        );
        let s: Ipv6Addr = "fd00:18:0:1::2".parse().unwrap();
        let d: Ipv6Addr = "fd00:19::10".parse().unwrap();
        let body = nested(
            1,
            &[
                nested(1, &[nla(3, &s.octets()), nla(4, &d.octets())]),
                nested(
                    2,
                    &[
                        nla(1, &[17]),
                        nla(2, &5000u16.to_be_bytes()),
                        nla(3, &53u16.to_be_bytes()),
                    ],
                ),
            ],
        );
        assert_eq!(&m[4..6], &0x0102u16.to_ne_bytes());
        assert_eq!(&m[6..8], &0x0005u16.to_ne_bytes());
        assert_eq!(m[16], 10); // AF_INET6
        assert_eq!(&m[20..], &body[..]);
        assert_eq!(
            m.len(),
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize
        );
    }
}
