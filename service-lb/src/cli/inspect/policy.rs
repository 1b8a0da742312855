//! `inspect policy [--pod ns/name]`: each local pod's effective NetworkPolicy, per
//! direction: whether it is isolated, the policies isolating it, and the longest-prefix
//! entries (peer, the pod it is, allowed ports). Read from the snapshot the daemon writes on
//! each policy sync (the kernel maps hold ids and prefixes, not names); works without the
//! daemon as long as the file is there.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cli::output::TableRow,
    model::policy::snapshot::{DirectionSnapshot, PodSnapshot, PolicySnapshot},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyRow {
    pub pod: String,
    pub direction: &'static str,
    pub isolated: bool,
    pub policies: String,
    /// `*` when the direction is not isolated (everything allowed).
    pub peer: String,
    pub peer_pod: String,
    pub ports: String,
}

impl TableRow for PolicyRow {
    const HEADER: &'static [&'static str] =
        &["pod", "direction", "policies", "peer", "peer pod", "ports"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.pod.clone(),
            self.direction.into(),
            self.policies.clone(),
            self.peer.clone(),
            self.peer_pod.clone(),
            self.ports.clone(),
        ]
    }
}

pub fn read(path: &Path) -> anyhow::Result<PolicySnapshot> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading the policy snapshot {} (written by the daemon on each policy sync; is \
             it running with --network-policy on, with this --bpffs?)",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The pods shown: all, or the one named `namespace/name`.
pub fn select<'a>(
    snapshot: &'a PolicySnapshot,
    pod: Option<&str>,
) -> anyhow::Result<Vec<&'a PodSnapshot>> {
    let pods: Vec<&PodSnapshot> = snapshot
        .pods
        .iter()
        .filter(|p| pod.is_none_or(|want| p.pod == want))
        .collect();
    if let (Some(want), true) = (pod, pods.is_empty()) {
        anyhow::bail!(
            "pod {want} is not a local pod of node {} in the snapshot",
            snapshot.node
        );
    }
    Ok(pods)
}

/// One row per entry; a direction that is not isolated is one row with peer `*`.
pub fn rows(snapshot: &PolicySnapshot, pods: &[&PodSnapshot]) -> anyhow::Result<Vec<PolicyRow>> {
    let mut rows = Vec::new();
    for pod in pods {
        for (direction, index) in [("ingress", pod.ingress), ("egress", pod.egress)] {
            let d = snapshot.direction(index).with_context(|| {
                format!(
                    "the snapshot names direction {index} for {}, which it lacks",
                    pod.pod
                )
            })?;
            direction_rows(&pod.pod, direction, d, &mut rows);
        }
    }
    Ok(rows)
}

/// Each pod with its two directions spelled out (`-o json`).
#[derive(Clone, Debug, Serialize)]
pub struct PodJson<'a> {
    pub pod: &'a str,
    pub ips: &'a [std::net::IpAddr],
    pub ingress: Option<&'a DirectionSnapshot>,
    pub egress: Option<&'a DirectionSnapshot>,
}

pub fn json<'a>(snapshot: &'a PolicySnapshot, pods: &[&'a PodSnapshot]) -> Vec<PodJson<'a>> {
    pods.iter()
        .map(|p| PodJson {
            pod: &p.pod,
            ips: &p.ips,
            ingress: snapshot.direction(p.ingress),
            egress: snapshot.direction(p.egress),
        })
        .collect()
}

fn direction_rows(
    pod: &str,
    direction: &'static str,
    d: &DirectionSnapshot,
    rows: &mut Vec<PolicyRow>,
) {
    let row = |peer: String, peer_pod: String, ports: String| PolicyRow {
        pod: pod.to_owned(),
        direction,
        isolated: d.isolated,
        policies: d.policies.join(","),
        peer,
        peer_pod,
        ports,
    };
    if !d.isolated {
        rows.push(row("*".into(), String::new(), "any (not isolated)".into()));
        return;
    }
    if d.rules.is_empty() {
        rows.push(row("-".into(), String::new(), "none (deny all)".into()));
        return;
    }
    for rule in &d.rules {
        let ports = if rule.ports.is_empty() {
            "none".to_owned()
        } else {
            rule.ports.join(",")
        };
        rows.push(row(
            rule.peer.clone(),
            rule.peer_pod.clone().unwrap_or_default(),
            ports,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::snapshot::RuleSnapshot;

    fn snapshot() -> PolicySnapshot {
        PolicySnapshot {
            node: "n1".into(),
            written_unix: 1,
            policies: 1,
            pods: vec![
                PodSnapshot {
                    pod: "x/a".into(),
                    ips: vec!["198.18.1.10".parse().expect("ip")],
                    ingress: 0,
                    egress: 1,
                },
                PodSnapshot {
                    pod: "x/c".into(),
                    ips: vec![],
                    ingress: 2,
                    egress: 1,
                },
            ],
            directions: vec![
                DirectionSnapshot {
                    isolated: true,
                    policies: vec!["x/web".into()],
                    rules: vec![
                        RuleSnapshot {
                            peer: "198.18.1.11/32".into(),
                            peer_pod: Some("y/b".into()),
                            ports: vec!["TCP 80".into(), "UDP 53".into()],
                        },
                        RuleSnapshot {
                            peer: "198.19.200.0/28".into(),
                            peer_pod: None,
                            ports: vec![],
                        },
                    ],
                },
                DirectionSnapshot::default(),
                DirectionSnapshot {
                    isolated: true,
                    policies: vec!["x/deny".into()],
                    rules: vec![],
                },
            ],
        }
    }

    #[test]
    fn rows_show_entries_open_directions_and_deny_all() {
        let s = snapshot();
        let shown = rows(&s, &select(&s, None).expect("all")).expect("consistent");
        let cells: Vec<Vec<String>> = shown.iter().map(TableRow::cells).collect();
        assert_eq!(
            cells,
            [
                [
                    "x/a",
                    "ingress",
                    "x/web",
                    "198.18.1.11/32",
                    "y/b",
                    "TCP 80,UDP 53"
                ],
                ["x/a", "ingress", "x/web", "198.19.200.0/28", "", "none"],
                ["x/a", "egress", "", "*", "", "any (not isolated)"],
                ["x/c", "ingress", "x/deny", "-", "", "none (deny all)"],
                ["x/c", "egress", "", "*", "", "any (not isolated)"],
            ]
            .map(|r| r.map(String::from).to_vec())
        );
    }

    #[test]
    fn one_pod_or_a_clear_error() {
        let s = snapshot();
        let one = select(&s, Some("x/c")).expect("x/c is there");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].pod, "x/c");
        let err = select(&s, Some("x/zz")).expect_err("not there");
        assert!(err.to_string().contains("x/zz"), "{err}");
        let mut broken = s.clone();
        broken.directions.truncate(1);
        let err = rows(&broken, &select(&broken, None).expect("all")).expect_err("index 2");
        assert!(err.to_string().contains("x/a"), "{err}");
    }
}
