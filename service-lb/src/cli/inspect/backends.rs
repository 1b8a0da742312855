//! `inspect backends`: every backend by id, its state (a `draining` backend is in no
//! frontend's slots any more and only serves the flows conntrack keeps on it) and its live
//! open connections (forward conntrack entries that name it and are not closing).

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use service_lb_common::service::{
    BACKEND_FLAG_LOCAL, BACKEND_STATE_ACTIVE, BACKEND_STATE_DRAINING, BACKEND_STATE_MAINTENANCE,
    BACKEND_STATE_QUARANTINED, BACKEND_STATE_TERMINATING,
};

use super::services::proto_name;
use crate::{
    cli::output::TableRow,
    dataplane::{Family, MapStore, StoreError},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: String,
    pub state: String,
    pub local: bool,
    /// Open connections (live, not closing, forward conntrack entries) that name this
    /// backend.
    pub connections: u64,
}

impl TableRow for BackendRow {
    const HEADER: &'static [&'static str] = &[
        "id",
        "addr",
        "port",
        "proto",
        "state",
        "local",
        "connections",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.addr.to_string(),
            self.port.to_string(),
            self.proto.clone(),
            self.state.clone(),
            self.local.to_string(),
            self.connections.to_string(),
        ]
    }
}

pub fn state_name(state: u8) -> String {
    match state {
        BACKEND_STATE_ACTIVE => "active".into(),
        BACKEND_STATE_TERMINATING => "terminating".into(),
        BACKEND_STATE_QUARANTINED => "quarantined".into(),
        BACKEND_STATE_MAINTENANCE => "maintenance".into(),
        BACKEND_STATE_DRAINING => "draining".into(),
        other => format!("unknown({other})"),
    }
}

/// Every backend; `flows` = open connections per backend id (see `conntrack::live_flows`).
pub fn rows(
    store: &impl MapStore,
    flows: &BTreeMap<u32, u64>,
) -> Result<Vec<BackendRow>, StoreError> {
    let mut rows = Vec::new();
    for family in Family::ALL {
        let mut list = store.list_backends(family)?;
        list.sort_by_key(|(id, _)| *id);
        rows.extend(list.into_iter().map(|(id, b)| BackendRow {
            id,
            addr: b.addr(),
            port: b.port(),
            proto: proto_name(b.proto()),
            state: state_name(b.state()),
            local: b.flags() & BACKEND_FLAG_LOCAL != 0,
            connections: flows.get(&id).copied().unwrap_or(0),
        }));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{BackendValue, FakeMaps};

    #[test]
    fn decodes_every_field() {
        let mut maps = FakeMaps::new();
        let addr: IpAddr = "fd00:18:0:1::2".parse().unwrap();
        maps.put_backend(
            4,
            &BackendValue::new(addr, 8080, 6, BACKEND_STATE_TERMINATING, BACKEND_FLAG_LOCAL),
        )
        .unwrap();
        maps.put_backend(
            9,
            &BackendValue::new(addr, 8081, 17, BACKEND_STATE_DRAINING, 0),
        )
        .unwrap();
        let rows = rows(&maps, &BTreeMap::from([(9, 3)])).unwrap();
        assert_eq!(
            rows,
            vec![
                BackendRow {
                    id: 4,
                    addr,
                    port: 8080,
                    proto: "tcp".into(),
                    state: "terminating".into(),
                    local: true,
                    connections: 0,
                },
                BackendRow {
                    id: 9,
                    addr,
                    port: 8081,
                    proto: "udp".into(),
                    state: "draining".into(),
                    local: false,
                    connections: 3,
                }
            ]
        );
        let json = crate::cli::output::render(&rows, crate::cli::output::Format::Json).unwrap();
        assert!(json.contains("\"addr\": \"fd00:18:0:1::2\""), "{json}");
    }
}
