//! Batches of client calls made from inside the client pod's namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::outcome::{HeldCheck, Spread};
use crate::netns::{run_in, NetNs};
use crate::servers::{tcp_ask, tcp_ask_from, udp_ask, udp_ask_from, Answer, HeldConnection};

/// Upper bound on the wall time of one batch, whatever its size.
const BATCH_DEADLINE: Duration = Duration::from_secs(20);

/// TCP or UDP, for a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    fn ask(self, addr: SocketAddr) -> Result<Answer> {
        match self {
            Transport::Tcp => tcp_ask(addr),
            Transport::Udp => udp_ask(addr),
        }
    }

    fn ask_from(self, addr: SocketAddr, port: u16) -> Result<Answer> {
        match self {
            Transport::Tcp => tcp_ask_from(addr, port),
            Transport::Udp => udp_ask_from(addr, port),
        }
    }
}

/// `count` calls (TCP connections or UDP queries from fresh sockets) to `addr` from
/// inside `client_ns`, one after the other. Stops early (counting the rest as failures)
/// past [`BATCH_DEADLINE`].
pub fn ask_many(
    client_ns: &NetNs,
    client: IpAddr,
    transport: Transport,
    addr: SocketAddr,
    count: u32,
) -> Result<Spread> {
    run_in(client_ns, || {
        let started = Instant::now();
        let mut spread = Spread::default();
        for _ in 0..count {
            if started.elapsed() > BATCH_DEADLINE {
                spread.record(addr, client, Err(anyhow::anyhow!("batch deadline passed")));
                continue;
            }
            spread.record(addr, client, transport.ask(addr));
        }
        Ok(spread)
    })
}

/// One call, from inside `client_ns`.
pub fn ask_once(client_ns: &NetNs, transport: Transport, addr: SocketAddr) -> Result<Answer> {
    run_in(client_ns, || transport.ask(addr))
}

/// One call from local port `port`, from inside `client_ns`.
pub fn ask_once_from(
    client_ns: &NetNs,
    transport: Transport,
    addr: SocketAddr,
    port: u16,
) -> Result<Answer> {
    run_in(client_ns, || transport.ask_from(addr, port))
}

/// Opens connections to `vip` from inside `client_ns` until each of `backends` holds one
/// (at most `max_tries` connections; extra connections are closed).
pub fn hold_one_per_backend(
    client_ns: &NetNs,
    vip: SocketAddr,
    backends: &[String],
    max_tries: u32,
) -> Result<BTreeMap<String, HeldConnection>> {
    run_in(client_ns, || {
        let mut held = BTreeMap::new();
        for _ in 0..max_tries {
            if held.len() == backends.len() {
                break;
            }
            let connection = HeldConnection::open(vip)?;
            let name = connection.first().name.clone();
            held.entry(name).or_insert(connection);
        }
        if held.len() != backends.len() {
            bail!(
                "after {max_tries} connections to {vip} only {:?} of {backends:?} accepted one",
                held.keys().collect::<Vec<_>>()
            );
        }
        Ok(held)
    })
}

/// Pings a held connection `pings` times.
pub fn ping_held(connection: &mut HeldConnection, pings: u32) -> HeldCheck {
    let backend = connection.first().name.clone();
    let mut check = HeldCheck {
        backend: backend.clone(),
        pings,
        answered: 0,
        first_error: None,
    };
    for _ in 0..pings {
        match connection.ping() {
            Ok(answer) if answer.name == backend => check.answered += 1,
            Ok(answer) => {
                check
                    .first_error
                    .get_or_insert(format!("answered by {} instead", answer.name));
            }
            Err(e) => {
                check.first_error.get_or_insert(format!("{e:#}"));
                break;
            }
        }
    }
    check
}
