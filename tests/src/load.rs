//! Continuous load through ClusterIPs while a test changes what translates them: new TCP
//! connections and UDP queries (fresh source ports each) and long-lived TCP streams pinged
//! over and over, all from one client pod. Every failure is counted with the moment it
//! happened (relative to the start) and the step that was running, so a test asserts
//! zero failures and its report says where any went wrong.
//!
//! Bounded: the load stops when the test's steps are done, and never runs longer than
//! [`MAX_LOAD`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::netns::{run_in, NetNs};
use crate::servers::{tcp_ask, udp_ask, HeldConnection};

/// Hard bound on one load run.
pub const MAX_LOAD: Duration = Duration::from_secs(180);
/// Pause between two rounds of pings over every held stream.
const PING_PAUSE: Duration = Duration::from_millis(20);

/// A long-lived stream and what it is (`opened under kube-proxy`, ...).
pub struct Stream {
    pub label: String,
    pub conn: HeldConnection,
}

impl Running<'_> {
    /// Streams still answering.
    pub fn live_streams(&self) -> usize {
        self.streams.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Where the load goes: the TCP and UDP frontends (any families).
#[derive(Clone, Debug)]
pub struct Targets {
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
}

/// What the load saw.
#[derive(Default)]
pub struct Counts {
    pub tcp_ok: AtomicU64,
    pub tcp_failed: AtomicU64,
    pub udp_ok: AtomicU64,
    pub udp_failed: AtomicU64,
    pub pings_ok: AtomicU64,
    /// Streams that failed a ping (each counted once, then left out).
    pub streams_broken: AtomicU64,
    /// Answers to new connections/queries per backend name.
    spread: Mutex<BTreeMap<String, u64>>,
    /// The first few failures, with when and during which step.
    errors: Mutex<Vec<String>>,
    /// Every broken stream: (its label, the step during which it broke).
    broken: Mutex<Vec<(String, String)>>,
    step: Mutex<String>,
}

impl Counts {
    fn failed(&self, counter: &AtomicU64, started: Instant, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let step = self.step.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < 20 {
                errors.push(format!("[{:?}, during {step:?}] {what}", started.elapsed()));
            }
        }
    }

    fn answered(&self, counter: &AtomicU64, backend: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut spread) = self.spread.lock() {
            *spread.entry(backend).or_default() += 1;
        }
    }

    /// The first failures seen (at most 20).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Every broken stream: (its label, the step during which it broke).
    pub fn broken_streams(&self) -> Vec<(String, String)> {
        self.broken.lock().map(|b| b.clone()).unwrap_or_default()
    }

    pub fn spread(&self) -> BTreeMap<String, u64> {
        self.spread.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// One line with every count.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "new TCP connections {} answered / {} failed; UDP queries {} answered / {} failed; \
             stream pings {} answered, {} streams broken; answers per backend {:?}",
            get(&self.tcp_ok),
            get(&self.tcp_failed),
            get(&self.udp_ok),
            get(&self.udp_failed),
            get(&self.pings_ok),
            get(&self.streams_broken),
            self.spread()
        )
    }

    pub fn total_failed(&self) -> u64 {
        self.tcp_failed.load(Ordering::Relaxed)
            + self.udp_failed.load(Ordering::Relaxed)
            + self.streams_broken.load(Ordering::Relaxed)
    }
}

/// The running load, handed to the test's steps.
pub struct Running<'a> {
    pub counts: &'a Counts,
    pub streams: &'a Mutex<Vec<Stream>>,
    client_ns: &'a NetNs,
    started: Instant,
}

impl Running<'_> {
    /// Names the step now running (printed with its time, and kept for failures).
    pub fn step(&self, what: &str) {
        eprintln!("[{:?}] step: {what}", self.started.elapsed());
        if let Ok(mut step) = self.counts.step.lock() {
            *step = what.to_owned();
        }
    }

    /// Opens `per_target` more long-lived streams to every TCP target, labelled `label`.
    pub fn open_streams(
        &self,
        targets: &[SocketAddr],
        per_target: usize,
        label: &str,
    ) -> Result<()> {
        let opened = run_in(self.client_ns, || {
            let mut opened = Vec::new();
            for target in targets {
                for _ in 0..per_target {
                    let conn = HeldConnection::open(*target)
                        .with_context(|| format!("opening a stream to {target} ({label})"))?;
                    opened.push(Stream {
                        label: format!("{label} to {target} on {}", conn.first().name),
                        conn,
                    });
                }
            }
            Ok(opened)
        })?;
        self.streams
            .lock()
            .map_err(|_| anyhow!("streams lock poisoned"))?
            .extend(opened);
        Ok(())
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Runs `steps` while the load runs from `client_ns` to `targets` (and over `streams`,
/// pinged until the end; each must keep answering from the backend that accepted it).
/// Returns the counts once the load threads stopped.
pub fn under_load<F>(
    client_ns: &NetNs,
    targets: &Targets,
    streams: Vec<Stream>,
    steps: F,
) -> Result<Counts>
where
    F: FnOnce(&Running) -> Result<()>,
{
    let counts = Counts::default();
    let streams = Mutex::new(streams);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let running = Running {
        counts: &counts,
        streams: &streams,
        client_ns,
        started,
    };
    let result = std::thread::scope(|scope| -> Result<()> {
        let clients = scope.spawn(|| {
            run_in(client_ns, || {
                let mut turn = 0usize;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LOAD {
                    let tcp = targets.tcp[turn % targets.tcp.len()];
                    let udp = targets.udp[turn % targets.udp.len()];
                    turn += 1;
                    match tcp_ask(tcp) {
                        Ok(a) => counts.answered(&counts.tcp_ok, a.name),
                        Err(e) => counts.failed(
                            &counts.tcp_failed,
                            started,
                            format!("new TCP connection to {tcp}: {e:#}"),
                        ),
                    }
                    match udp_ask(udp) {
                        Ok(a) => counts.answered(&counts.udp_ok, a.name),
                        Err(e) => counts.failed(
                            &counts.udp_failed,
                            started,
                            format!("UDP query to {udp}: {e:#}"),
                        ),
                    }
                }
                Ok(())
            })
        });
        let pinger = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LOAD {
                if let Ok(mut streams) = streams.lock() {
                    // A stream that fails once is broken for good (reset, or its packets
                    // go nowhere): counted once and left out from then on.
                    streams.retain_mut(|s| {
                        let expected = s.conn.first().name.clone();
                        let failure = match s.conn.ping() {
                            Ok(a) if a.name == expected => None,
                            Ok(a) => Some(format!("answered by {}", a.name)),
                            Err(e) => Some(format!("{e:#}")),
                        };
                        match failure {
                            None => {
                                counts.pings_ok.fetch_add(1, Ordering::Relaxed);
                                true
                            }
                            Some(why) => {
                                let step =
                                    counts.step.lock().map(|s| s.clone()).unwrap_or_default();
                                if let Ok(mut broken) = counts.broken.lock() {
                                    broken.push((s.label.clone(), step));
                                }
                                counts.failed(
                                    &counts.streams_broken,
                                    started,
                                    format!("stream {} broke: {why}", s.label),
                                );
                                false
                            }
                        }
                    });
                }
                std::thread::sleep(PING_PAUSE);
            }
        });
        let result = steps(&running);
        stop.store(true, Ordering::Relaxed);
        clients
            .join()
            .map_err(|_| anyhow!("client thread panicked"))??;
        pinger
            .join()
            .map_err(|_| anyhow!("pinger thread panicked"))?;
        result
    });
    result?;
    Ok(counts)
}
