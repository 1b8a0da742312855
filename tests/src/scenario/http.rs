//! A minimal HTTP/1.1 server that answers every request with its pod's name, and
//! bounded-time clients, for the demo: one request per connection (`Connection: close`),
//! or a kept-alive connection that asks again and again (a long download or a websocket
//! stands for it: an established connection that must outlive an endpoint change).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{run_in, NetNs};

const TIMEOUT: Duration = Duration::from_secs(2);
const ACCEPT_POLL: Duration = Duration::from_millis(20);
const MAX_HEAD: usize = 8192;
const MAX_LIFE: Duration = Duration::from_secs(600);
/// A kept-alive connection with no new request for this long is closed by the server.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(30);

/// An HTTP server in a pod's namespace; stopped and joined on drop.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` inside `ns` and answers `name` to every request.
    pub fn start(ns: &NetNs, addr: SocketAddr, name: &str) -> Result<Self> {
        let listener = run_in(ns, || {
            TcpListener::bind(addr).with_context(|| format!("binding http {addr}"))
        })?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let body = format!("{name}\n");
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("http-{name}"))
            .spawn(move || serve(&listener, &body, &flag))
            .context("spawning the http server")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, body: &str, stop: &AtomicBool) {
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFE {
        match listener.accept() {
            Ok((stream, _)) => {
                // Each connection on its own thread, so a kept-alive one blocks no other.
                let body = body.to_owned();
                let _ = std::thread::Builder::new()
                    .name("http-conn".into())
                    .spawn(move || answer(stream, &body));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

/// Answers requests on `stream` until one asks to close (or none comes for a while).
fn answer(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(KEEP_ALIVE_IDLE))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let started = Instant::now();
    while started.elapsed() < MAX_LIFE {
        let mut head = Vec::new();
        let mut buf = [0u8; 1];
        // Byte by byte: a kept-alive client sends its next request only after the answer.
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf)?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let keep_alive = String::from_utf8_lossy(&head)
            .to_ascii_lowercase()
            .contains("connection: keep-alive");
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes())?;
        if !keep_alive {
            return Ok(());
        }
    }
    Ok(())
}

/// A kept-alive HTTP connection: one TCP connection, many requests.
pub struct KeptAlive {
    stream: TcpStream,
    /// Who answered the first request.
    pub first: String,
}

impl KeptAlive {
    /// Connects and asks once. Call from inside the client's namespace; the connection can
    /// then be used from any thread.
    pub fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut kept = Self {
            stream,
            first: String::new(),
        };
        kept.first = kept.get()?;
        Ok(kept)
    }

    /// One more `GET /` on the same connection; the answering pod's name.
    pub fn get(&mut self) -> Result<String> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: keep-alive\r\n\r\n")
            .context("sending on the kept-alive connection")?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.stream.read(&mut buf).context("reading the response")?;
            if n == 0 {
                bail!("the connection was closed");
            }
            if head.len() > MAX_HEAD {
                bail!("response head too long");
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            bail!("unexpected response {head:?}");
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .context("no content-length")?
            .parse()
            .context("bad content-length")?;
        let mut body = vec![0u8; length.min(MAX_HEAD)];
        self.stream
            .read_exact(&mut body)
            .context("reading the body")?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

/// `GET /` to `addr`; returns the body's first line (the pod name). Call from inside the
/// client's namespace.
pub fn get_name(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut raw = String::new();
    stream
        .take(64 * 1024)
        .read_to_string(&mut raw)
        .context("reading the response")?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("unexpected response {head:?}");
    }
    Ok(body.trim().to_owned())
}
