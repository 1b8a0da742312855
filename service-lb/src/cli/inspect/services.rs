//! `inspect services`: one row per frontend (master entry), backends resolved by id, named
//! from the names map (`SLB_SVCNAME_V1`: namespace/name, port name, kind), filtered by
//! Service and kind.

use std::{collections::BTreeMap, fmt, net::SocketAddr};

use clap::Args;
use serde::Serialize;
use service_lb_common::{
    names::{SvcName, KIND_CLUSTER_IP, KIND_EXTERNAL_IP, KIND_LOAD_BALANCER, KIND_NODE_PORT},
    service::{
        SCOPE_INTERNAL, SVC_FLAG_CLUSTER_IP, SVC_FLAG_EXTERNAL_IP, SVC_FLAG_LOAD_BALANCER,
        SVC_FLAG_NODE_PORT, SVC_FLAG_SNAT, SVC_FLAG_TWO_SCOPES,
    },
};

use crate::{
    cli::output::TableRow,
    dataplane::{Family, MapStore, StoreError, SvcKey},
};

/// The kind of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum FrontendKind {
    #[value(name = "clusterip")]
    ClusterIp,
    #[value(name = "nodeport")]
    NodePort,
    #[value(name = "externalip")]
    ExternalIp,
    #[value(name = "loadbalancer")]
    LoadBalancer,
}

impl FrontendKind {
    /// From the names map's `kind`, else from the master entry's flags.
    pub fn of(name: Option<&SvcName>, flags: u16) -> Option<Self> {
        match name.map(|n| n.kind) {
            Some(KIND_CLUSTER_IP) => Some(Self::ClusterIp),
            Some(KIND_NODE_PORT) => Some(Self::NodePort),
            Some(KIND_EXTERNAL_IP) => Some(Self::ExternalIp),
            Some(KIND_LOAD_BALANCER) => Some(Self::LoadBalancer),
            Some(_) => None,
            None => [
                (SVC_FLAG_CLUSTER_IP, Self::ClusterIp),
                (SVC_FLAG_NODE_PORT, Self::NodePort),
                (SVC_FLAG_EXTERNAL_IP, Self::ExternalIp),
                (SVC_FLAG_LOAD_BALANCER, Self::LoadBalancer),
            ]
            .into_iter()
            .find(|(bit, _)| flags & bit != 0)
            .map(|(_, kind)| kind),
        }
    }

    fn is_north_south(self) -> bool {
        self != Self::ClusterIp
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIp => "clusterip",
            Self::NodePort => "nodeport",
            Self::ExternalIp => "externalip",
            Self::LoadBalancer => "loadbalancer",
        })
    }
}

/// `--service ns/name`: a Service's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ServiceRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{s:?} is not namespace/name")),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which frontends `inspect services` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
pub struct ServiceFilter {
    /// Only the frontends of this Service (`namespace/name`).
    #[arg(long = "service", value_name = "NAMESPACE/NAME")]
    pub service: Option<ServiceRef>,
    /// Only frontends of this kind.
    #[arg(long, value_enum)]
    pub kind: Option<FrontendKind>,
}

impl ServiceFilter {
    pub fn keeps(&self, row: &ServiceRow) -> bool {
        let service_ok = self
            .service
            .as_ref()
            .is_none_or(|s| row.service.as_deref() == Some(s.to_string().as_str()));
        let kind_ok = self
            .kind
            .is_none_or(|k| row.kind.as_deref() == Some(k.to_string().as_str()));
        service_ok && kind_ok
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceRow {
    /// `namespace/name` of the Service it was programmed for (`None`: no name recorded).
    pub service: Option<String>,
    /// The Service port's name ("" when unnamed or unknown).
    pub port_name: String,
    /// `clusterip`, ... (`None`: unknown).
    pub kind: Option<String>,
    /// `vip:port/proto`.
    pub frontend: String,
    pub scope: u8,
    /// `external` (clients outside the cluster; every client with one scope) or
    /// `internal` (pods and the node, when the traffic policies differ).
    pub scope_name: String,
    /// North-south frontends: `Local` (externalTrafficPolicy Local: an entry per scope)
    /// or `Cluster`; `None` for ClusterIP frontends.
    pub policy: Option<String>,
    /// New flows through this entry are SNATed to the node's address.
    pub snat: bool,
    /// loadBalancerSourceRanges of this frontend (empty: any client).
    pub source_ranges: Vec<String>,
    pub service_id: u32,
    pub count: u32,
    pub flags: u16,
    pub affinity_timeout_s: u32,
    /// `addr:port` per slot; a slot or backend that is missing shows as `missing(...)`.
    pub backends: Vec<String>,
}

impl TableRow for ServiceRow {
    const HEADER: &'static [&'static str] = &[
        "service",
        "port",
        "kind",
        "frontend",
        "scope",
        "policy",
        "snat",
        "source ranges",
        "id",
        "count",
        "flags",
        "backends",
    ];
    fn cells(&self) -> Vec<String> {
        let or_dash = |s: Option<&str>| s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned();
        vec![
            or_dash(self.service.as_deref()),
            or_dash(Some(&self.port_name)),
            or_dash(self.kind.as_deref()),
            self.frontend.clone(),
            self.scope_name.clone(),
            or_dash(self.policy.as_deref()),
            if self.snat { "yes" } else { "no" }.to_owned(),
            or_dash(Some(&self.source_ranges.join(","))),
            self.service_id.to_string(),
            self.count.to_string(),
            flag_names(self.flags),
            self.backends.join(", "),
        ]
    }
}

/// `cluster-ip,two-scopes`; unknown bits as hex; `-` for none.
pub fn flag_names(flags: u16) -> String {
    use service_lb_common::service::{
        SVC_FLAG_CLUSTER_IP, SVC_FLAG_DROP_NO_ENDPOINT, SVC_FLAG_EXTERNAL_IP,
        SVC_FLAG_LOAD_BALANCER, SVC_FLAG_MAGLEV, SVC_FLAG_NODE_PORT, SVC_FLAG_SNAT,
        SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES,
    };
    let known = [
        (SVC_FLAG_CLUSTER_IP, "cluster-ip"),
        (SVC_FLAG_TWO_SCOPES, "two-scopes"),
        (SVC_FLAG_NODE_PORT, "node-port"),
        (SVC_FLAG_EXTERNAL_IP, "external-ip"),
        (SVC_FLAG_LOAD_BALANCER, "load-balancer"),
        (SVC_FLAG_SNAT, "snat"),
        (SVC_FLAG_DROP_NO_ENDPOINT, "drop-no-endpoint"),
        (SVC_FLAG_SOURCE_RANGES, "source-ranges"),
        (SVC_FLAG_MAGLEV, "maglev"),
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
    let names: BTreeMap<u32, SvcName> = store.list_names()?.into_iter().collect();
    let mut rows = Vec::new();
    for family in Family::ALL {
        let entries: BTreeMap<SvcKey, _> = store.list_services(family)?.into_iter().collect();
        let backends: BTreeMap<u32, _> = store.list_backends(family)?.into_iter().collect();
        let mut ranges: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (id, cidr) in store.list_source_ranges(family)? {
            ranges.entry(id).or_default().push(cidr.to_string());
        }
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
            let name = names.get(&master.service_id);
            let kind = FrontendKind::of(name, master.flags);
            let policy = kind.filter(|k| k.is_north_south()).map(|_| {
                if master.flags & SVC_FLAG_TWO_SCOPES != 0 {
                    "Local".to_owned()
                } else {
                    "Cluster".to_owned()
                }
            });
            rows.push(ServiceRow {
                service: name.map(|n| format!("{}/{}", n.namespace(), n.name())),
                port_name: name.map(|n| n.port_name().to_owned()).unwrap_or_default(),
                kind: kind.map(|k| k.to_string()),
                scope_name: if key.scope() == SCOPE_INTERNAL {
                    "internal"
                } else {
                    "external"
                }
                .to_owned(),
                policy,
                snat: master.flags & SVC_FLAG_SNAT != 0,
                source_ranges: ranges.get(&master.service_id).cloned().unwrap_or_default(),
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
        assert_eq!(flag_names(0b110), "cluster-ip,node-port");
        assert_eq!(flag_names(0b110_0100), "node-port,snat,drop-no-endpoint");
        assert_eq!(flag_names(1 << 15), "0x8000");
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
                source_ranges: Vec::new(),
            })
            .unwrap();
        w.upsert(&FrontendSpec {
            key: key("fd00:19::a"),
            backends: vec![],
            flags: 0,
            affinity_timeout_s: 0,
            source_ranges: Vec::new(),
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

#[cfg(test)]
mod name_tests {
    use super::*;
    use crate::{
        cli::output::{render, Format},
        dataplane::{FakeMaps, ServiceWriter, Syncer},
        model::{DesiredBackend, DesiredFrontend, Protocol, Scope, ServiceDesired, ServiceName},
    };

    fn service(ns: &str, name: &str, vip: &str, port: u16, port_name: &str) -> ServiceDesired {
        ServiceDesired {
            name: ServiceName {
                namespace: ns.into(),
                name: name.into(),
            },
            frontends: vec![DesiredFrontend {
                addr: vip.parse().expect("vip"),
                port,
                protocol: Protocol::Tcp,
                scope: Scope::External,
                port_name: port_name.into(),
                backends: vec![DesiredBackend {
                    addr: "198.18.1.2:8080".parse().expect("addr"),
                    terminating: false,
                    local: false,
                }],
                serving: vec!["198.18.1.2:8080".parse().expect("addr")],
                affinity_timeout_s: 0,
                no_endpoints: Default::default(),
            }],
            skipped: vec![],
            external: Vec::new(),
            health_check: None,
            last_change_trigger_time: None,
        }
    }

    fn maps() -> FakeMaps {
        let mut s = Syncer::new(ServiceWriter::open(FakeMaps::new()).expect("opens"));
        s.full_sync(&[
            service("default", "web", "198.19.0.10", 80, "http"),
            service("kube-system", "kube-dns", "198.19.0.53", 53, ""),
        ]);
        let mut maps = s.writer().store().clone();
        // A frontend with no name (written by hand, as an older daemon would have).
        let master = SvcKey::new("198.19.0.99".parse().expect("ip"), 99, 6, 0, 0);
        maps.put_service(&master, &service_lb_common::SvcValue::master(0, 4242, 0, 0))
            .expect("puts");
        maps
    }

    #[test]
    fn rows_carry_the_service_names_and_filters_select_them() {
        let rows = rows(&maps()).expect("reads");
        let by_frontend: BTreeMap<&str, &ServiceRow> =
            rows.iter().map(|r| (r.frontend.as_str(), r)).collect();
        let web = by_frontend["198.19.0.10:80/tcp"];
        assert_eq!(web.service.as_deref(), Some("default/web"));
        assert_eq!(web.port_name, "http");
        assert_eq!(web.kind.as_deref(), Some("clusterip"));
        let dns = by_frontend["198.19.0.53:53/tcp"];
        assert_eq!(dns.service.as_deref(), Some("kube-system/kube-dns"));
        assert_eq!(dns.port_name, "");
        let unnamed = by_frontend["198.19.0.99:99/tcp"];
        assert_eq!(unnamed.service, None);
        assert_eq!(unnamed.kind, None, "no name and no cluster-ip flag");

        let only = |filter: ServiceFilter| -> Vec<String> {
            rows.iter()
                .filter(|r| filter.keeps(r))
                .map(|r| r.frontend.clone())
                .collect()
        };
        let dns_ref: ServiceRef = "kube-system/kube-dns".parse().expect("parses");
        assert_eq!(
            only(ServiceFilter {
                service: Some(dns_ref),
                kind: None
            }),
            vec!["198.19.0.53:53/tcp".to_string()]
        );
        assert_eq!(
            only(ServiceFilter {
                service: None,
                kind: Some(FrontendKind::ClusterIp)
            }),
            vec![
                "198.19.0.10:80/tcp".to_string(),
                "198.19.0.53:53/tcp".to_string()
            ]
        );
        assert_eq!(
            only(ServiceFilter {
                service: Some("default/nope".parse().expect("parses")),
                kind: None
            }),
            Vec::<String>::new()
        );
        assert!("no-slash".parse::<ServiceRef>().is_err());
        assert!("a/b/c".parse::<ServiceRef>().is_err());
    }

    #[test]
    fn every_output_format_names_the_service() {
        let rows: Vec<ServiceRow> = rows(&maps())
            .expect("reads")
            .into_iter()
            .filter(|r| r.service.is_some())
            .collect();
        let table = render(&rows, Format::Table).expect("renders");
        assert!(
            table.contains("default/web") && table.contains("http"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, Format::Json).expect("renders")).expect("json");
        assert_eq!(json[0]["service"], "default/web");
        assert_eq!(json[0]["port_name"], "http");
        assert_eq!(json[0]["kind"], "clusterip");
        let yaml = render(&rows, Format::Yaml).expect("renders");
        let back: Vec<BTreeMap<String, serde_json::Value>> =
            serde_saphyr::from_str(&yaml).expect("yaml parses");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0]["service"], "default/web");
        assert_eq!(back[1]["service"], "kube-system/kube-dns");
    }

    #[test]
    fn the_command_line_takes_the_filters() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "service-lb",
            "inspect",
            "services",
            "--service",
            "default/web",
            "--kind",
            "clusterip",
            "-o",
            "yaml",
        ])
        .expect("parses");
        let crate::cli::Command::Inspect(args) = cli.command else {
            panic!("not inspect")
        };
        assert_eq!(args.output, Format::Yaml);
        let crate::cli::inspect::What::Services { filter } = args.what else {
            panic!("not services")
        };
        assert_eq!(filter.kind, Some(FrontendKind::ClusterIp));
        assert_eq!(
            filter.service.map(|s| s.to_string()).as_deref(),
            Some("default/web")
        );
    }
}
