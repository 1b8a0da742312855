//! `inspect backends`: every backend by id.

use std::net::IpAddr;

use serde::Serialize;
use service_lb_common::service::{
    BACKEND_FLAG_LOCAL, BACKEND_STATE_ACTIVE, BACKEND_STATE_MAINTENANCE, BACKEND_STATE_QUARANTINED,
    BACKEND_STATE_TERMINATING,
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
}

impl TableRow for BackendRow {
    const HEADER: &'static [&'static str] = &["id", "addr", "port", "proto", "state", "local"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.addr.to_string(),
            self.port.to_string(),
            self.proto.clone(),
            self.state.clone(),
            self.local.to_string(),
        ]
    }
}

pub fn state_name(state: u8) -> String {
    match state {
        BACKEND_STATE_ACTIVE => "active".into(),
        BACKEND_STATE_TERMINATING => "terminating".into(),
        BACKEND_STATE_QUARANTINED => "quarantined".into(),
        BACKEND_STATE_MAINTENANCE => "maintenance".into(),
        other => format!("unknown({other})"),
    }
}

pub fn rows(store: &impl MapStore) -> Result<Vec<BackendRow>, StoreError> {
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
        let rows = rows(&maps).unwrap();
        assert_eq!(
            rows,
            vec![BackendRow {
                id: 4,
                addr,
                port: 8080,
                proto: "tcp".into(),
                state: "terminating".into(),
                local: true
            }]
        );
        let json = crate::cli::output::render(&rows, crate::cli::output::Format::Json).unwrap();
        assert!(json.contains("\"addr\": \"fd00:18:0:1::2\""), "{json}");
    }
}
