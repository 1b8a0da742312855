//! A minimal HTTP/1.1 server that answers every request with its pod's name, and a
//! bounded-time client, for the demo. One request per connection (`Connection: close`).

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
                // Requests are tiny: answer inline, one at a time.
                let _ = answer(stream, body);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

fn answer(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
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
