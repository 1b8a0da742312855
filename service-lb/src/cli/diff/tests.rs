//! `diff` on the in-memory maps: equal after a sync, then drift injected by writing map
//! entries directly (as a bug or a hand edit would), each reported on the right line.

use service_lb_common::{service::SVC_FLAG_CLUSTER_IP, SvcValue};

use super::*;
use crate::{
    dataplane::{FakeMaps, ServiceWriter, SvcKey, Syncer},
    model::{DesiredBackend, DesiredFrontend, Protocol, Scope},
};

fn service(name: &str, vip: &str, port: u16, backends: &[&str]) -> ServiceDesired {
    ServiceDesired {
        name: ServiceName {
            namespace: "default".into(),
            name: name.into(),
        },
        frontends: vec![DesiredFrontend {
            addr: vip.parse().expect("vip"),
            port,
            protocol: Protocol::Tcp,
            scope: Scope::External,
            port_name: "http".into(),
            backends: backends
                .iter()
                .map(|b| DesiredBackend {
                    addr: b.parse().expect("backend"),
                    terminating: false,
                    local: false,
                })
                .collect(),
            serving: backends
                .iter()
                .map(|b| b.parse().expect("backend"))
                .collect(),
            affinity_timeout_s: 0,
            no_endpoints: Default::default(),
        }],
        skipped: vec![],
        external: Vec::new(),
        health_check: None,
        last_change_trigger_time: None,
    }
}

fn desired() -> Vec<ServiceDesired> {
    vec![
        service("api", "198.19.0.20", 443, &["198.18.1.5:8443"]),
        service(
            "web",
            "198.19.0.10",
            80,
            &["198.18.1.2:8080", "198.18.1.3:8080"],
        ),
    ]
}

/// The maps a daemon would have written for `desired()`.
fn synced() -> FakeMaps {
    let mut s = Syncer::new(ServiceWriter::open(FakeMaps::new()).expect("opens"));
    let report = s.full_sync(&desired());
    assert!(
        report.failed.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
    s.writer().store().clone()
}

fn master(vip: &str, port: u16) -> SvcKey {
    SvcKey::new(vip.parse().expect("vip"), port, 6, 0, 0)
}

fn backend_id(maps: &FakeMaps, addr: &str) -> u32 {
    let addr: SocketAddr = addr.parse().expect("addr");
    maps.backends
        .iter()
        .find(|(_, b)| SocketAddr::new(b.addr(), b.port()) == addr)
        .map(|((_, id), _)| *id)
        .expect("backend in the maps")
}

#[test]
fn maps_written_by_the_syncer_equal_the_desired_state() {
    let maps = synced();
    let rows = diff(&desired(), &actual(&maps).expect("reads"));
    assert_eq!(rows, vec![]);
}

#[test]
fn an_extra_frontend_is_reported_with_its_recorded_name() {
    let mut maps = synced();
    let key = master("198.19.0.99", 99);
    maps.put_service(&key, &SvcValue::master(0, 777, SVC_FLAG_CLUSTER_IP, 0))
        .expect("puts");
    maps.put_name(777, &SvcName::new("old", "gone", "", 1))
        .expect("puts");
    let rows = diff(&desired(), &actual(&maps).expect("reads"));
    assert_eq!(
        rows,
        vec![DiffRow {
            service: "old/gone".into(),
            frontend: "198.19.0.99:99/tcp".into(),
            change: Change::Extra,
            details: vec!["service id 777 with 0 slot(s)".into()],
        }]
    );
}

#[test]
fn a_missing_frontend_and_a_missing_backend_are_reported() {
    let mut maps = synced();
    // The api frontend's master is gone: the frontend is missing.
    maps.delete_service(&master("198.19.0.20", 443))
        .expect("deletes");
    // web: its master says one slot instead of two: 198.18.1.3 is not in the slots.
    let web = master("198.19.0.10", 80);
    let mut value = maps.get_service(&web).expect("reads").expect("exists");
    value.count = 1;
    maps.put_service(&web, &value).expect("puts");
    let rows = diff(&desired(), &actual(&maps).expect("reads"));
    assert_eq!(
        rows,
        vec![
            DiffRow {
                service: "default/api".into(),
                frontend: "198.19.0.20:443/tcp".into(),
                change: Change::Missing,
                details: vec!["wanted with 1 backend(s): 198.18.1.5:8443 active".into()],
            },
            DiffRow {
                service: "default/web".into(),
                frontend: "198.19.0.10:80/tcp".into(),
                change: Change::Different,
                details: vec!["backend 198.18.1.3:8080 active missing".into()],
            },
        ]
    );
}

#[test]
fn a_changed_slot_names_the_backend_it_points_at() {
    let mut maps = synced();
    let web = master("198.19.0.10", 80);
    let value = maps.get_service(&web).expect("reads").expect("exists");
    // Slot 2 now points at api's backend.
    let other = backend_id(&maps, "198.18.1.5:8443");
    maps.put_service(&web.with_slot(2), &SvcValue::slot(other, value.service_id))
        .expect("puts");
    let rows = diff(&desired(), &actual(&maps).expect("reads"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].frontend, "198.19.0.10:80/tcp");
    assert_eq!(rows[0].change, Change::Different);
    assert_eq!(
        rows[0].details,
        vec![
            "backend 198.18.1.3:8080 active missing".to_string(),
            "backend 198.18.1.5:8443 active extra".to_string(),
        ]
    );
}

#[test]
fn swapped_slots_flags_state_and_a_dangling_slot_are_reported() {
    let mut maps = synced();
    let web = master("198.19.0.10", 80);
    let mut value = maps.get_service(&web).expect("reads").expect("exists");
    let (b2, b3) = (
        backend_id(&maps, "198.18.1.2:8080"),
        backend_id(&maps, "198.18.1.3:8080"),
    );
    maps.put_service(&web.with_slot(1), &SvcValue::slot(b3, value.service_id))
        .expect("puts");
    maps.put_service(&web.with_slot(2), &SvcValue::slot(b2, value.service_id))
        .expect("puts");
    let rows = diff(&desired(), &actual(&maps).expect("reads"));
    assert_eq!(
        rows[0].details,
        vec!["slots: maps [198.18.1.3:8080,198.18.1.2:8080], wanted [198.18.1.2:8080,198.18.1.3:8080]".to_string()]
    );

    value.flags = 0;
    value.affinity_timeout_s = 30;
    value.count = 3;
    maps.put_service(&web, &value).expect("puts");
    let rows = diff(&desired(), &actual(&maps).expect("reads"));
    assert_eq!(
        rows[0].details,
        vec![
            "flags: maps -, wanted cluster-ip".to_string(),
            "affinity timeout: maps 30 s, wanted 0 s".to_string(),
            "slot 3 missing".to_string(),
        ]
    );
}

#[test]
fn rows_render_as_table_json_and_yaml() {
    let mut maps = synced();
    maps.delete_service(&master("198.19.0.20", 443))
        .expect("deletes");
    let rows = diff(&desired(), &actual(&maps).expect("reads"));
    let table = output::render(&rows, Format::Table).expect("renders");
    assert!(
        table.contains("default/api") && table.contains("missing"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&output::render(&rows, Format::Json).expect("renders")).expect("json");
    assert_eq!(json[0]["change"], "missing");
    assert_eq!(json[0]["service"], "default/api");
    let yaml = output::render(&rows, Format::Yaml).expect("renders");
    assert!(yaml.contains("change: missing"), "{yaml}");
}

/// A LoadBalancer frontend with source ranges: equal after a sync; a range deleted behind
/// the daemon's back, or a NodePort frontend lost, is reported.
#[test]
fn north_south_frontends_and_their_source_ranges_are_compared() {
    use crate::model::{ExternalFrontend, FrontendKind, NoEndpoints, Snat, TrafficPolicy};
    let external = |kind, addr: &str, port, ranges: &[&str]| ExternalFrontend {
        kind,
        addr: addr.parse().expect("addr"),
        port,
        protocol: Protocol::Tcp,
        scope: Scope::External,
        policy: TrafficPolicy::Cluster,
        port_name: "http".into(),
        backends: vec![DesiredBackend {
            addr: "198.18.1.2:8080".parse().expect("backend"),
            terminating: false,
            local: false,
        }],
        no_endpoints: NoEndpoints::Reject,
        snat: Snat::Always,
        source_ranges: ranges.iter().map(|r| r.parse().expect("range")).collect(),
        affinity_timeout_s: 0,
        maglev: false,
    };
    let mut lb = service("lb", "198.19.0.30", 80, &["198.18.1.2:8080"]);
    lb.external = vec![
        external(FrontendKind::NodePort, "198.19.255.1", 30080, &[]),
        external(
            FrontendKind::LoadBalancer,
            "198.19.200.200",
            80,
            &["198.19.200.0/25"],
        ),
    ];
    let wanted = vec![lb];
    let mut s = Syncer::new(ServiceWriter::open(FakeMaps::new()).expect("opens"));
    let report = s.full_sync(&wanted);
    assert!(report.failed.is_empty(), "{report:?}");
    let mut maps = s.writer().store().clone();
    assert_eq!(diff(&wanted, &actual(&maps).expect("reads")), vec![]);

    let (id, range) = *maps.source_ranges.iter().next().expect("a range");
    maps.delete_source_range(id, &range).expect("deletes");
    maps.delete_service(&SvcKey::new(
        "198.19.255.1".parse().expect("ip"),
        30080,
        6,
        0,
        0,
    ))
    .expect("deletes");
    let rows = diff(&wanted, &actual(&maps).expect("reads"));
    let summary: Vec<(String, Change, String)> = rows
        .iter()
        .map(|r| (r.frontend.clone(), r.change, r.details.join("; ")))
        .collect();
    assert_eq!(summary.len(), 2, "{summary:#?}");
    assert_eq!(summary[0].0, "198.19.200.200:80/tcp");
    assert_eq!(summary[0].1, Change::Different);
    assert_eq!(
        summary[0].2,
        "source ranges: maps [], wanted [198.19.200.0/25]"
    );
    assert_eq!(summary[1].0, "198.19.255.1:30080/tcp");
    assert_eq!(summary[1].1, Change::Missing);
}
