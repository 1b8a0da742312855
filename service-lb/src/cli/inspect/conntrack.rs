//! `inspect conntrack`: every entry of the four conntrack maps, with the seconds left
//! until it expires (CLOCK_BOOTTIME, as the programs use).

use std::net::SocketAddr;

use serde::Serialize;
use service_lb_common::conntrack::{
    CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_BACKEND_GONE, CT_FLAG_CLOSING, CT_FLAG_DIRECT,
    CT_FLAG_FIN_BACKEND, CT_FLAG_FIN_CLIENT, CT_FLAG_HAIRPIN, CT_FLAG_NORTH_SOUTH,
    CT_FLAG_PORT_NAT, CT_FLAG_RST, CT_FLAG_SEEN_REPLY, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
    CT_STATE_HALF_CLOSED, CT_STATE_NEW,
};

use super::services::proto_name;
use crate::{
    cli::output::TableRow,
    dataplane::{CtRecord, CtTable},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConntrackRow {
    pub table: CtTable,
    pub dir: String,
    pub proto: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub backend_id: u32,
    pub service_id: u32,
    pub state: String,
    pub flags: Vec<&'static str>,
    /// With the `port_nat` flag: the client's port on the wire (service entries) or its
    /// own port (reply entries).
    pub nat_port: Option<u16>,
    /// Negative: expired (the entry is dead, the LRU map has not reclaimed it yet).
    pub seconds_left: i64,
}

impl TableRow for ConntrackRow {
    const HEADER: &'static [&'static str] = &[
        "dir",
        "proto",
        "src",
        "dst",
        "backend",
        "service",
        "state",
        "flags",
        "nat port",
        "expires in (s)",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.dir.clone(),
            self.proto.clone(),
            self.src.to_string(),
            self.dst.to_string(),
            self.backend_id.to_string(),
            self.service_id.to_string(),
            self.state.clone(),
            self.flags.join("|"),
            self.nat_port
                .map_or_else(|| "-".into(), |port| port.to_string()),
            self.seconds_left.to_string(),
        ]
    }
}

/// Now on CLOCK_BOOTTIME, in nanoseconds (what `bpf_ktime_get_boot_ns` returns).
pub fn boottime_ns() -> anyhow::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)?;
    let secs = u64::try_from(now.tv_sec())?;
    let nanos = u64::try_from(now.tv_nsec())?;
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Open connections per backend id: the forward (`CT_DIR_SERVICE`) entries that have not
/// expired at `now` and are not closing (a FIN or RST seen), one per connection; direct
/// flows (backend id 0) are not counted.
pub fn live_flows(records: &[CtRecord], now: u64) -> std::collections::BTreeMap<u32, u64> {
    let mut flows = std::collections::BTreeMap::new();
    for record in records {
        if record.dir == CT_DIR_SERVICE
            && record.entry.backend_id != 0
            && record.entry.state != CT_STATE_CLOSING
            && record.entry.expires_ns > now
        {
            *flows.entry(record.entry.backend_id).or_default() += 1;
        }
    }
    flows
}

fn flag_names(flags: u16) -> Vec<&'static str> {
    [
        (CT_FLAG_SEEN_REPLY, "seen_reply"),
        (CT_FLAG_CLOSING, "closing"),
        (CT_FLAG_BACKEND_GONE, "backend_gone"),
        (CT_FLAG_NORTH_SOUTH, "north_south"),
        (CT_FLAG_PORT_NAT, "port_nat"),
        (CT_FLAG_DIRECT, "direct"),
        (CT_FLAG_FIN_CLIENT, "fin_client"),
        (CT_FLAG_FIN_BACKEND, "fin_backend"),
        (CT_FLAG_RST, "rst"),
        (CT_FLAG_HAIRPIN, "hairpin"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

pub fn rows(records: &[CtRecord], now_ns: u64) -> Vec<ConntrackRow> {
    records
        .iter()
        .map(|r| ConntrackRow {
            table: r.table,
            dir: match r.dir {
                CT_DIR_SERVICE => "service".into(),
                CT_DIR_REPLY => "reply".into(),
                other => format!("unknown({other})"),
            },
            proto: proto_name(r.proto),
            src: SocketAddr::new(r.saddr, r.sport),
            dst: SocketAddr::new(r.daddr, r.dport),
            backend_id: r.entry.backend_id,
            service_id: r.entry.service_id,
            state: match r.entry.state {
                CT_STATE_NEW => "new".into(),
                CT_STATE_ESTABLISHED => "established".into(),
                CT_STATE_CLOSING => "closing".into(),
                CT_STATE_HALF_CLOSED => "half_closed".into(),
                other => format!("unknown({other})"),
            },
            flags: flag_names(r.entry.flags),
            nat_port: (r.entry.flags & CT_FLAG_PORT_NAT != 0)
                .then(|| u16::from_be(r.entry.nat_port_be)),
            seconds_left: (i128::from(r.entry.expires_ns) - i128::from(now_ns))
                .div_euclid(1_000_000_000)
                .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_lb_common::CtEntry;

    #[test]
    fn live_flows_count_forward_entries_that_are_neither_expired_nor_closing() {
        let record = |dir, backend_id, expires_ns| CtRecord {
            table: CtTable::Tcp,
            saddr: "198.18.1.2".parse().unwrap(),
            daddr: "198.19.0.10".parse().unwrap(),
            sport: 40000,
            dport: 80,
            proto: 6,
            dir,
            entry: CtEntry {
                expires_ns,
                backend_id,
                ..CtEntry::default()
            },
        };
        let records = [
            record(CT_DIR_SERVICE, 3, 200),
            record(CT_DIR_REPLY, 3, 200),
            record(CT_DIR_SERVICE, 3, 300),
            record(CT_DIR_SERVICE, 4, 50),
            record(CT_DIR_SERVICE, 0, 300),
            CtRecord {
                entry: CtEntry {
                    state: CT_STATE_CLOSING,
                    ..record(CT_DIR_SERVICE, 3, 300).entry
                },
                ..record(CT_DIR_SERVICE, 3, 300)
            },
        ];
        assert_eq!(
            live_flows(&records, 100),
            std::collections::BTreeMap::from([(3, 2)])
        );
    }

    #[test]
    fn decodes_and_computes_seconds_left() {
        let record = CtRecord {
            table: CtTable::Tcp,
            saddr: "198.18.1.2".parse().unwrap(),
            daddr: "198.19.0.10".parse().unwrap(),
            sport: 40000,
            dport: 80,
            proto: 6,
            dir: CT_DIR_SERVICE,
            entry: CtEntry {
                expires_ns: 100_000_000_000,
                backend_id: 3,
                service_id: 7,
                flags: CT_FLAG_SEEN_REPLY | CT_FLAG_NORTH_SOUTH,
                state: CT_STATE_ESTABLISHED,
                ..CtEntry::default()
            },
        };
        let rows = rows(&[record], 40_500_000_000);
        assert_eq!(rows[0].seconds_left, 59);
        assert_eq!(rows[0].src.to_string(), "198.18.1.2:40000");
        assert_eq!(rows[0].flags, vec!["seen_reply", "north_south"]);
        assert_eq!(rows[0].state, "established");
        assert_eq!(rows[0].dir, "service");
        let expired = super::rows(&[record], 101_000_000_000);
        assert_eq!(expired[0].seconds_left, -1);
        assert_eq!(rows[0].nat_port, None);
        assert_eq!(rows[0].cells()[8], "-");
    }

    #[test]
    fn shows_the_port_of_a_port_nat_entry() {
        let record = CtRecord {
            table: CtTable::Any,
            saddr: "198.18.2.10".parse().unwrap(),
            daddr: "198.18.1.2".parse().unwrap(),
            sport: 5353,
            dport: 61000,
            proto: 17,
            dir: CT_DIR_REPLY,
            entry: CtEntry {
                expires_ns: 100_000_000_000,
                flags: CT_FLAG_PORT_NAT | CT_FLAG_DIRECT,
                nat_port_be: 40000u16.to_be(),
                ..CtEntry::default()
            },
        };
        let rows = rows(&[record], 0);
        assert_eq!(rows[0].flags, vec!["port_nat", "direct"]);
        assert_eq!(rows[0].nat_port, Some(40000));
        assert_eq!(rows[0].cells()[8], "40000");
        assert_eq!(rows[0].dir, "reply");
    }

    #[test]
    fn names_the_hairpin_flag() {
        assert_eq!(
            flag_names(CT_FLAG_SEEN_REPLY | CT_FLAG_HAIRPIN),
            vec!["seen_reply", "hairpin"]
        );
    }

    #[test]
    fn boottime_is_readable() {
        assert!(boottime_ns().unwrap() > 0);
    }
}
