//! Small TCP/UDP servers that answer with their name, and bounded-time clients.
//!
//! Wire format of every answer: one line `"<name> <client addr as the server saw it>\n"`.
//! - TCP: the server sends an answer as soon as it accepts, then one answer per line it
//!   receives (so a held connection can `ping` repeatedly).
//! - UDP: one answer datagram per datagram received.
//!
//! Sockets belong to the namespace they were created in: servers bind inside the pod's
//! namespace (through [`run_in`]) and then serve from ordinary threads; clients must be
//! called from inside the client's namespace (run the whole batch in one [`run_in`]).

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::netns::{run_in, NetNs};

/// Connect, read and write timeout of every client call.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Sends of one UDP query before it counts as unanswered.
const UDP_ATTEMPTS: u32 = 4;
/// How often server loops look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Hard bound on a server's life, should its owner never drop it.
const SERVER_MAX_LIFE: Duration = Duration::from_secs(600);
/// Bound on the requests one TCP connection serves.
const MAX_REQUESTS_PER_CONNECTION: u32 = 100_000;
/// Longest line a server or client accepts.
const MAX_LINE: usize = 256;

/// What a client got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Name of the server that answered.
    pub name: String,
    /// The client address as the server saw it (shows whether the source was rewritten).
    pub client_seen_by_server: SocketAddr,
    /// The server address as the client's socket saw it (for UDP, the source of the
    /// reply datagram; for TCP, the connected peer).
    pub server_seen_by_client: SocketAddr,
}

fn answer_line(name: &str, peer: SocketAddr) -> String {
    format!("{name} {peer}\n")
}

fn parse_answer(line: &str, server_seen_by_client: SocketAddr) -> Result<Answer> {
    let mut words = line.split_whitespace();
    let (Some(name), Some(peer), None) = (words.next(), words.next(), words.next()) else {
        bail!("malformed answer {line:?}");
    };
    let client_seen_by_server = peer
        .parse()
        .with_context(|| format!("malformed answer {line:?}"))?;
    Ok(Answer {
        name: name.to_owned(),
        client_seen_by_server,
        server_seen_by_client,
    })
}

/// TCP and UDP servers of one pod, stopped and joined on drop.
pub struct Servers {
    name: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Binds TCP listeners on `tcp` and UDP sockets on `udp` inside `ns` and serves them,
    /// answering with `name`.
    pub fn start(ns: &NetNs, name: &str, tcp: &[SocketAddr], udp: &[SocketAddr]) -> Result<Self> {
        let (listeners, sockets) = run_in(ns, || {
            let listeners = tcp
                .iter()
                .map(|a| TcpListener::bind(a).with_context(|| format!("binding tcp {a}")))
                .collect::<Result<Vec<_>>>()?;
            let sockets = udp
                .iter()
                .map(|a| UdpSocket::bind(a).with_context(|| format!("binding udp {a}")))
                .collect::<Result<Vec<_>>>()?;
            Ok((listeners, sockets))
        })?;
        let mut servers = Self {
            name: name.to_owned(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let (name, stop) = (name.to_owned(), servers.stop.clone());
            servers.threads.push(spawn(&format!("tcp-{name}"), move || {
                serve_tcp(listener, &name, &stop)
            })?);
        }
        for socket in sockets {
            socket.set_read_timeout(Some(STOP_POLL))?;
            let (name, stop) = (name.to_owned(), servers.stop.clone());
            servers.threads.push(spawn(&format!("udp-{name}"), move || {
                serve_udp(&socket, &name, &stop)
            })?);
        }
        Ok(servers)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .context("spawning a server thread")
}

fn should_stop(stop: &AtomicBool, started: Instant) -> bool {
    stop.load(Ordering::Relaxed) || started.elapsed() > SERVER_MAX_LIFE
}

fn serve_tcp(listener: TcpListener, name: &str, stop: &Arc<AtomicBool>) {
    let started = Instant::now();
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !should_stop(stop, started) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(STOP_POLL.as_millis() as u16)).is_err() {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let (owned_name, stop) = (name.to_owned(), stop.clone());
                    match spawn("tcp-conn", move || {
                        serve_connection(stream, peer, &owned_name, &stop)
                    }) {
                        Ok(h) => connections.push(h),
                        Err(e) => eprintln!("server {name}: {e:#}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    eprintln!("server {name}: accept: {e}");
                    break;
                }
            }
        }
        connections.retain(|h| !h.is_finished());
    }
    for h in connections {
        let _ = h.join();
    }
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let started = Instant::now();
    let answer = answer_line(name, peer);
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(STOP_POLL)))
        .and_then(|()| stream.set_write_timeout(Some(CLIENT_TIMEOUT)))
        .and_then(|()| stream.try_clone());
    let Ok(mut writer) = setup else { return };
    if writer.write_all(answer.as_bytes()).is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut served = 0;
    while served < MAX_REQUESTS_PER_CONNECTION && !should_stop(stop, started) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                line.clear();
                served += 1;
                if writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Ok(_) if line.len() > MAX_LINE => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn serve_udp(socket: &UdpSocket, name: &str, stop: &AtomicBool) {
    let started = Instant::now();
    let mut buf = [0u8; MAX_LINE];
    while !should_stop(stop, started) {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let _ = socket.send_to(answer_line(name, peer).as_bytes(), peer);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => eprintln!("server {name}: udp recv: {e}"),
        }
    }
}

/// One TCP connection: connect (bounded), read the greeting, close.
/// Call from inside the client's namespace.
pub fn tcp_ask(addr: SocketAddr) -> Result<Answer> {
    HeldConnection::open(addr).map(|held| held.first)
}

/// One UDP query from a fresh socket (fresh source port) connected to `addr`: a connected
/// socket only accepts datagrams whose source is `addr`, so an answer proves the reply
/// came back from the address the client asked (reverse NAT for a ClusterIP).
/// Call from inside the client's namespace.
pub fn udp_ask(addr: SocketAddr) -> Result<Answer> {
    udp_ask_from(addr, 0)
}

/// `udp_ask` from local port `port` (0: any).
pub fn udp_ask_from(addr: SocketAddr, port: u16) -> Result<Answer> {
    let socket = UdpSocket::bind(unspecified(addr, port))
        .with_context(|| format!("binding a udp client socket to port {port}"))?;
    socket
        .connect(addr)
        .with_context(|| format!("udp connect {addr}"))?;
    // UDP may lose a datagram (a busy machine, a neighbour still resolving): the query is
    // sent again from the same socket (same flow) until CLIENT_TIMEOUT is spent.
    socket.set_read_timeout(Some(CLIENT_TIMEOUT / UDP_ATTEMPTS))?;
    let mut buf = [0u8; MAX_LINE];
    let mut attempt = 0;
    let n = loop {
        attempt += 1;
        socket
            .send(b"q\n")
            .with_context(|| format!("udp send to {addr}"))?;
        match socket.recv(&mut buf) {
            Ok(n) => break n,
            Err(e)
                if attempt < UDP_ATTEMPTS
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("no udp answer from {addr} after {attempt} attempts"))
            }
        }
    };
    let from = socket.peer_addr()?;
    parse_answer(&String::from_utf8_lossy(&buf[..n]), from)
}

/// One UDP client socket kept across many queries (one flow, like a DNS client that
/// keeps its socket), connected to `addr`.
pub struct UdpClient {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl UdpClient {
    /// Binds an ephemeral port and connects. Call from inside the client's namespace; the
    /// socket can then be used from any thread.
    pub fn open(addr: SocketAddr) -> Result<Self> {
        let socket = UdpSocket::bind(unspecified(addr, 0)).context("binding a udp client")?;
        socket
            .connect(addr)
            .with_context(|| format!("udp connect {addr}"))?;
        Ok(Self { socket, addr })
    }

    /// Sends one query and waits up to `wait` for its answer: `None` when none came
    /// (UDP gives no other sign of a lost datagram).
    pub fn query(&self, wait: Duration) -> Result<Option<Answer>> {
        self.socket.set_read_timeout(Some(wait))?;
        self.socket
            .send(b"q\n")
            .with_context(|| format!("udp send to {}", self.addr))?;
        let mut buf = [0u8; MAX_LINE];
        match self.socket.recv(&mut buf) {
            Ok(n) => parse_answer(&String::from_utf8_lossy(&buf[..n]), self.addr).map(Some),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("udp recv from {}", self.addr)),
        }
    }
}

/// The unspecified address of `addr`'s family, port `port`.
fn unspecified(addr: SocketAddr, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, port)
}

/// `tcp_ask` from local port `port`, bound with SO_REUSEADDR (so a port whose previous
/// connection is in TIME_WAIT can be used again, as a client reusing a port does).
pub fn tcp_ask_from(addr: SocketAddr, port: u16) -> Result<Answer> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .context("tcp socket")?;
    socket.set_reuse_address(true).context("SO_REUSEADDR")?;
    socket
        .bind(&unspecified(addr, port).into())
        .with_context(|| format!("binding a tcp client socket to port {port}"))?;
    socket
        .connect_timeout(&addr.into(), CLIENT_TIMEOUT)
        .with_context(|| format!("tcp connect {addr} from port {port}"))?;
    HeldConnection::greeted(socket.into(), addr).map(|held| held.first)
}

/// `tcp_ask` from local address `source` (any port): the client address a Service's
/// session affinity keys on.
pub fn tcp_ask_bound(addr: SocketAddr, source: std::net::IpAddr) -> Result<Answer> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .context("tcp socket")?;
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .with_context(|| format!("binding a tcp client socket to {source}"))?;
    socket
        .connect_timeout(&addr.into(), CLIENT_TIMEOUT)
        .with_context(|| format!("tcp connect {addr} from {source}"))?;
    HeldConnection::greeted(socket.into(), addr).map(|held| held.first)
}

/// A TCP connection kept open to check that established flows keep working.
pub struct HeldConnection {
    reader: BufReader<TcpStream>,
    first: Answer,
}

impl HeldConnection {
    /// Connects (bounded) and reads the greeting. Call from inside the client's namespace;
    /// the connection can then be used from any thread.
    pub fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
            .with_context(|| format!("tcp connect {addr}"))?;
        Self::greeted(stream, addr)
    }

    /// Reads the greeting on a connected `stream` (bounded).
    fn greeted(stream: TcpStream, addr: SocketAddr) -> Result<Self> {
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        let peer = stream.peer_addr()?;
        let mut reader = BufReader::new(stream);
        let first =
            read_answer(&mut reader, peer).with_context(|| format!("tcp greeting from {addr}"))?;
        Ok(Self { reader, first })
    }

    /// The first answer (who accepted the connection).
    pub fn first(&self) -> &Answer {
        &self.first
    }

    /// Sends `ping` and reads the answer.
    pub fn ping(&mut self) -> Result<Answer> {
        let stream = self.reader.get_mut();
        stream.write_all(b"ping\n").context("tcp ping")?;
        let peer = stream.peer_addr()?;
        read_answer(&mut self.reader, peer)
    }
}

fn read_answer(reader: &mut BufReader<TcpStream>, peer: SocketAddr) -> Result<Answer> {
    let mut line = String::new();
    let n = reader.read_line(&mut line).context("reading an answer")?;
    if n == 0 || n > MAX_LINE {
        bail!("connection closed or answer too long ({n} bytes)");
    }
    parse_answer(&line, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() -> Result<()> {
        let peer: SocketAddr = "[fd00:18:0:1::a]:40000".parse()?;
        let server: SocketAddr = "198.19.0.10:80".parse()?;
        let answer = parse_answer(&answer_line("b2", peer), server)?;
        assert_eq!(answer.name, "b2");
        assert_eq!(answer.client_seen_by_server, peer);
        assert_eq!(answer.server_seen_by_client, server);
        Ok(())
    }

    #[test]
    fn malformed_answers_are_errors() {
        let server: SocketAddr = "198.19.0.10:80".parse().expect("literal");
        for bad in ["", "b1", "b1 notanaddr", "b1 1.2.3.4:5 extra"] {
            assert!(parse_answer(bad, server).is_err(), "{bad:?}");
        }
    }
}
