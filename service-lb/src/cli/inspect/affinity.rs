//! `inspect affinity`: every sessionAffinity ClientIP entry (client, frontend, backend,
//! seconds since the client's last new flow, and whether it is still within the
//! frontend's timeout), names resolved from the services and backends maps.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use super::services::proto_name;
use crate::{
    cli::output::TableRow,
    dataplane::{AffinityRecord, Family, MapStore, StoreError},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AffinityRow {
    pub client: IpAddr,
    pub service_id: u32,
    /// `vip:port/proto` of the frontend, when it is still programmed.
    pub frontend: Option<String>,
    pub backend_id: u32,
    /// The backend's address, when it still exists.
    pub backend: Option<SocketAddr>,
    pub age_s: u64,
    /// Younger than the frontend's `timeoutSeconds` (the next new flow sticks).
    pub live: bool,
}

impl TableRow for AffinityRow {
    const HEADER: &'static [&'static str] = &[
        "client", "service", "frontend", "backend", "addr", "age (s)", "live",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.client.to_string(),
            self.service_id.to_string(),
            self.frontend.clone().unwrap_or_else(|| "-".into()),
            self.backend_id.to_string(),
            self.backend.map_or_else(|| "-".into(), |a| a.to_string()),
            self.age_s.to_string(),
            self.live.to_string(),
        ]
    }
}

/// The rows of `records` at boot-time clock `now_ns`, sorted by client then service.
pub fn rows(
    records: &[AffinityRecord],
    store: &impl MapStore,
    now_ns: u64,
) -> Result<Vec<AffinityRow>, StoreError> {
    let mut frontends: HashMap<u32, (String, u32)> = HashMap::new();
    let mut backends = HashMap::new();
    for family in Family::ALL {
        for (key, value) in store.list_services(family)? {
            if key.slot() == 0 {
                let name = format!(
                    "{}/{}",
                    SocketAddr::new(key.addr(), key.port()),
                    proto_name(key.proto())
                );
                frontends.insert(value.service_id, (name, value.affinity_timeout_s));
            }
        }
        for (id, value) in store.list_backends(family)? {
            backends.insert(id, SocketAddr::new(value.addr(), value.port()));
        }
    }
    let mut rows: Vec<AffinityRow> = records
        .iter()
        .map(|r| {
            let age_ns = now_ns.saturating_sub(r.last_used_ns);
            let frontend = frontends.get(&r.service_id);
            AffinityRow {
                client: r.client,
                service_id: r.service_id,
                frontend: frontend.map(|(name, _)| name.clone()),
                backend_id: r.backend_id,
                backend: backends.get(&r.backend_id).copied(),
                age_s: age_ns / 1_000_000_000,
                live: frontend.is_some_and(|(_, timeout_s)| {
                    *timeout_s != 0 && age_ns <= u64::from(*timeout_s) * 1_000_000_000
                }),
            }
        })
        .collect();
    rows.sort_by_key(|r| (r.client, r.service_id));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use service_lb_common::SvcValue;

    use super::*;
    use crate::dataplane::{BackendValue, FakeMaps, SvcKey};

    #[test]
    fn resolves_names_and_tells_live_from_stale() {
        let mut maps = FakeMaps::new();
        let vip: IpAddr = "198.19.0.10".parse().expect("vip");
        maps.put_service(
            &SvcKey::new(vip, 80, 6, 0, 0),
            &SvcValue::master(1, 7, 0, 10),
        )
        .expect("put");
        maps.put_backend(
            3,
            &BackendValue::new("198.18.1.2".parse().expect("addr"), 8080, 6, 0, 0),
        )
        .expect("put");
        let s = 1_000_000_000;
        let records = [
            AffinityRecord {
                client: "198.18.1.9".parse().expect("client"),
                service_id: 7,
                backend_id: 3,
                last_used_ns: 100 * s,
            },
            AffinityRecord {
                client: "198.18.1.5".parse().expect("client"),
                service_id: 8,
                backend_id: 4,
                last_used_ns: 105 * s,
            },
        ];
        let rows = rows(&records, &maps, 111 * s).expect("rows");
        assert_eq!(rows.len(), 2);
        // Sorted by client: .5 first (a frontend that is gone), then .9.
        assert_eq!(rows[0].frontend, None);
        assert_eq!(rows[0].backend, None);
        assert!(!rows[0].live);
        assert_eq!(rows[0].age_s, 6);
        assert_eq!(rows[1].frontend.as_deref(), Some("198.19.0.10:80/tcp"));
        assert_eq!(
            rows[1].backend,
            Some("198.18.1.2:8080".parse().expect("addr"))
        );
        assert_eq!(rows[1].age_s, 11);
        assert!(!rows[1].live, "11 s old with a 10 s timeout");
        let rows = super::rows(&records, &maps, 109 * s).expect("rows");
        assert!(rows[1].live);
    }
}
