//! `inspect services`: one row per frontend (master entry), backends resolved by id.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::Serialize;

use crate::{
    cli::output::TableRow,
    dataplane::{Family, MapStore, StoreError, SvcKey},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRow {
    /// `vip:port/proto`.
    pub frontend: String,
    pub scope: u8,
    pub service_id: u32,
    pub count: u32,
    pub flags: u16,
    pub affinity_timeout_s: u32,
    /// `addr:port` per slot; a slot or backend that is missing shows as `missing(...)`.
    pub backends: Vec<String>,
}

impl TableRow for ServiceRow {
    const HEADER: &'static [&'static str] =
        &["frontend", "scope", "id", "count", "flags", "backends"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.frontend.clone(),
            self.scope.to_string(),
            self.service_id.to_string(),
            self.count.to_string(),
            flag_names(self.flags),
            self.backends.join(", "),
        ]
    }
}

/// `cluster-ip,two-scopes`; unknown bits as hex; `-` for none.
pub fn flag_names(flags: u16) -> String {
    use service_lb_common::service::{SVC_FLAG_CLUSTER_IP, SVC_FLAG_TWO_SCOPES};
    let known = [
        (SVC_FLAG_CLUSTER_IP, "cluster-ip"),
        (SVC_FLAG_TWO_SCOPES, "two-scopes"),
    ];
    let mut names: Vec<String> = known
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect();
    let unknown = known.iter().fold(flags, |rest, (bit, _)| rest & !bit);
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        other => other.to_string(),
    }
}

pub fn rows(store: &impl MapStore) -> Result<Vec<ServiceRow>, StoreError> {
    let mut rows = Vec::new();
    for family in Family::ALL {
        let entries: BTreeMap<SvcKey, _> = store.list_services(family)?.into_iter().collect();
        let backends: BTreeMap<u32, _> = store.list_backends(family)?.into_iter().collect();
        for (key, master) in entries.iter().filter(|(k, _)| k.slot() == 0) {
            let slots = (1..=master.count.min(u32::from(u16::MAX)) as u16)
                .map(|slot| match entries.get(&key.with_slot(slot)) {
                    None => format!("missing(slot {slot})"),
                    Some(s) => match backends.get(&s.backend_id) {
                        Some(b) => SocketAddr::new(b.addr(), b.port()).to_string(),
                        None => format!("missing(backend {})", s.backend_id),
                    },
                })
                .collect();
            rows.push(ServiceRow {
                frontend: format!(
                    "{}/{}",
                    SocketAddr::new(key.addr(), key.port()),
                    proto_name(key.proto())
                ),
                scope: key.scope(),
                service_id: master.service_id,
                count: master.count,
                flags: master.flags,
                affinity_timeout_s: master.affinity_timeout_s,
                backends: slots,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod flag_tests {
    use super::flag_names;

    #[test]
    fn flags_are_named() {
        assert_eq!(flag_names(0), "-");
        assert_eq!(flag_names(0b10), "cluster-ip");
        assert_eq!(flag_names(0b11), "cluster-ip,two-scopes");
        assert_eq!(flag_names(0b110), "cluster-ip,0x4");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{
        BackendSpec, FakeMaps, FrontendKey, FrontendSpec, L4Proto, ServiceWriter,
    };

    #[test]
    fn one_row_per_frontend_with_resolved_backends() {
        let mut w = ServiceWriter::open(FakeMaps::new()).unwrap();
        let key = |addr: &str| FrontendKey {
            addr: addr.parse().unwrap(),
            port: 53,
            proto: L4Proto::Udp,
            scope: 0,
        };
        let be = |a: &str| BackendSpec {
            addr: a.parse().unwrap(),
            state: 0,
            local: false,
        };
        let v4 = w
            .upsert(&FrontendSpec {
                key: key("198.19.0.10"),
                backends: vec![be("198.18.1.2:5353")],
                flags: 2,
                affinity_timeout_s: 0,
            })
            .unwrap();
        w.upsert(&FrontendSpec {
            key: key("fd00:19::a"),
            backends: vec![],
            flags: 0,
            affinity_timeout_s: 0,
        })
        .unwrap();
        let rows = rows(w.store()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].frontend, "198.19.0.10:53/udp");
        assert_eq!(rows[0].service_id, v4.service_id);
        assert_eq!(rows[0].backends, vec!["198.18.1.2:5353".to_string()]);
        assert_eq!(rows[1].frontend, "[fd00:19::a]:53/udp");
        assert_eq!(rows[1].count, 0);
        assert!(rows[1].backends.is_empty());
    }

    #[test]
    fn a_torn_frontend_shows_what_is_missing() {
        let mut maps = FakeMaps::new();
        let master = SvcKey::new("198.19.0.10".parse().unwrap(), 80, 6, 0, 0);
        maps.put_service(&master, &service_lb_common::SvcValue::master(2, 5, 0, 0))
            .unwrap();
        maps.put_service(
            &master.with_slot(1),
            &service_lb_common::SvcValue::slot(9, 5),
        )
        .unwrap();
        let rows = rows(&maps).unwrap();
        assert_eq!(
            rows[0].backends,
            vec![
                "missing(backend 9)".to_string(),
                "missing(slot 2)".to_string()
            ]
        );
    }
}
