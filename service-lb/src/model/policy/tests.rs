//! Table tests: the upstream netpol e2e cases (`test/e2e/network/netpol/network_policy.go`)
//! that the model can express, on the same 3x3 model (namespaces x, y, z labelled `ns`;
//! pods a, b, c labelled `pod`, each serving 80 and 81 on TCP, UDP and SCTP with container
//! ports named `serve-<port>-<proto>`), spread over two nodes and dual-stack. Expected
//! reachability is written by hand from the spec, with upstream's wildcard style
//! (`x/*`, `*/a`); both the compiled tables (as the kernel looks them up) and the reference
//! evaluator must give it. Self connections are not probed (upstream allows loopback).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use k8s_openapi::{
    api::{
        core::v1::{Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{lookup::LookupTables, reference, PolicyModel, Proto};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const NODES: [&str; 2] = ["n1", "n2"];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ips(ns: usize, pod: usize) -> [IpAddr; 2] {
    let host = 10 + pod as u8;
    [
        IpAddr::V4(Ipv4Addr::new(198, 18, ns as u8, host)),
        // Written like the IPv4 host part: fd00:18:0:1::11 is y/b.
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x18,
            0,
            ns as u16,
            0,
            0,
            0,
            0x10 + pod as u16,
        )),
    ]
}

pub(super) fn namespace(name: &str, pairs: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels(pairs)),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn model_pod(ns: usize, pod: usize, pod_labels: &[(&str, &str)]) -> Pod {
    let containers = [80, 81]
        .into_iter()
        .flat_map(|port| {
            ["TCP", "UDP", "SCTP"]
                .into_iter()
                .map(move |proto| Container {
                    name: format!("cont-{port}-{}", proto.to_lowercase()),
                    ports: Some(vec![ContainerPort {
                        container_port: port,
                        name: Some(format!("serve-{port}-{}", proto.to_lowercase())),
                        protocol: Some(proto.into()),
                        ..ContainerPort::default()
                    }]),
                    ..Container::default()
                })
        })
        .collect();
    let [v4, v6] = ips(ns, pod);
    Pod {
        metadata: ObjectMeta {
            namespace: Some(NAMESPACES[ns].into()),
            name: Some(PODS[pod].into()),
            labels: Some(labels(pod_labels)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODES[(ns * 3 + pod) % 2].into()),
            containers,
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(v4.to_string()),
            pod_ips: Some(vec![
                PodIP { ip: v4.to_string() },
                PodIP { ip: v6.to_string() },
            ]),
            ..PodStatus::default()
        }),
    }
}

pub(super) fn policy(yaml: &str) -> NetworkPolicy {
    match serde_saphyr::from_str(yaml) {
        Ok(p) => p,
        Err(e) => panic!("bad test policy: {e}\n{yaml}"),
    }
}

/// The 3x3 cluster as seen from each node.
struct Cluster {
    models: Vec<PolicyModel>,
}

impl Cluster {
    fn new() -> Self {
        let mut c = Self {
            models: NODES.iter().map(|n| PolicyModel::new(*n)).collect(),
        };
        for (i, ns) in NAMESPACES.iter().enumerate() {
            c.each(|m| {
                m.apply_namespace(&namespace(
                    ns,
                    &[("ns", ns), ("kubernetes.io/metadata.name", ns)],
                ))
            });
            for (j, pod) in PODS.iter().enumerate() {
                c.each(|m| m.apply_pod(&model_pod(i, j, &[("pod", pod)])));
            }
        }
        c
    }

    fn each(&mut self, mut f: impl FnMut(&mut PolicyModel)) {
        for m in &mut self.models {
            f(m);
            m.recompute();
        }
    }

    fn apply(&mut self, yaml: &str) {
        let p = policy(yaml);
        self.each(|m| m.apply_policy(&p));
    }

    /// Checks every probe against `expected`; panics with every difference.
    fn check(&self, case: &str, probes: &[(Proto, u16)], expected: &Reach) {
        let tables = LookupTables::build(self.models.iter().flat_map(|m| m.compiled().values()));
        let mut wrong = Vec::new();
        for &(proto, port) in probes {
            for src in 0..9 {
                for dst in 0..9 {
                    if src == dst {
                        continue;
                    }
                    let want = expected.get(src, dst);
                    for fam in 0..2 {
                        let s = ips(src / 3, src % 3)[fam];
                        let d = ips(dst / 3, dst % 3)[fam];
                        let kernel = tables.allowed(s, d, proto, port);
                        let reference = reference::allowed(&self.models[0], s, d, proto, port);
                        if kernel != want || reference != want {
                            wrong.push(format!(
                                "{proto:?}/{port} {} -> {} ({s} -> {d}): expected {want}, \
                                 compiled {kernel}, reference {reference}",
                                name(src),
                                name(dst)
                            ));
                        }
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{case}:\n{}", wrong.join("\n"));
    }
}

fn name(i: usize) -> String {
    format!("{}/{}", NAMESPACES[i / 3], PODS[i % 3])
}

/// Expected reachability between the 9 pods (upstream's `Reachability`).
#[derive(Clone)]
struct Reach {
    m: [[bool; 9]; 9],
}

impl Reach {
    fn all(v: bool) -> Self {
        Self { m: [[v; 9]; 9] }
    }

    fn get(&self, src: usize, dst: usize) -> bool {
        self.m[src][dst]
    }

    /// Sets `from -> to` for every pod matching the patterns (`x/a`, `x/*`, `*/a`, `*`).
    fn peer(mut self, from: &str, to: &str, v: bool) -> Self {
        for s in 0..9 {
            for d in 0..9 {
                if matches(from, s) && matches(to, d) {
                    self.m[s][d] = v;
                }
            }
        }
        self
    }
}

fn matches(pattern: &str, i: usize) -> bool {
    if pattern == "*" {
        return true;
    }
    let (ns, pod) = pattern.split_once('/').unwrap_or((pattern, "*"));
    (ns == "*" || ns == NAMESPACES[i / 3]) && (pod == "*" || pod == PODS[i % 3])
}

const TCP80: (Proto, u16) = (Proto::Tcp, 80);
const TCP81: (Proto, u16) = (Proto::Tcp, 81);
const UDP80: (Proto, u16) = (Proto::Udp, 80);
const UDP81: (Proto, u16) = (Proto::Udp, 81);
const SCTP80: (Proto, u16) = (Proto::Sctp, 80);
const SCTP81: (Proto, u16) = (Proto::Sctp, 81);
const ALL_PROBES: [(Proto, u16); 6] = [TCP80, TCP81, UDP80, UDP81, SCTP80, SCTP81];

#[test]
fn no_policy_allows_everything() {
    Cluster::new().check("no policy", &ALL_PROBES, &Reach::all(true));
}

#[test]
fn default_deny_ingress() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}",
    );
    c.check(
        "deny ingress",
        &ALL_PROBES,
        &Reach::all(true).peer("*", "x/*", false),
    );
}

#[test]
fn default_deny_all() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}",
    );
    let want = Reach::all(true)
        .peer("*", "x/*", false)
        .peer("x/*", "*", false);
    c.check("deny all", &ALL_PROBES, &want);
}

#[test]
fn default_deny_egress_with_empty_egress_list() {
    let mut c = Cluster::new();
    // "should deny egress from all pods in a namespace": egress [] with policyTypes Egress.
    c.apply("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress], egress: []}");
    c.check(
        "deny egress",
        &ALL_PROBES,
        &Reach::all(true).peer("x/*", "*", false),
    );
}

#[test]
fn allow_all_ingress_and_egress() {
    let mut c = Cluster::new();
    c.apply("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}");
    c.apply(
        "metadata: {name: allow, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
  egress: [{}]",
    );
    c.check("allow all over deny all", &ALL_PROBES, &Reach::all(true));
}

#[test]
fn pod_selector_within_the_namespace() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]",
    );
    let want = Reach::all(true)
        .peer("*", "x/a", false)
        .peer("x/b", "x/a", true);
    c.check("podSelector", &ALL_PROBES, &want);
}

#[test]
fn namespace_selector() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]",
    );
    let want = Reach::all(true)
        .peer("*", "x/a", false)
        .peer("y/*", "x/a", true);
    c.check("namespaceSelector", &ALL_PROBES, &want);
}

#[test]
fn namespace_selector_match_expressions() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x, z]}]",
    );
    let want = Reach::all(true)
        .peer("*", "x/a", false)
        .peer("y/*", "x/a", true);
    c.check("namespaceSelector NotIn", &ALL_PROBES, &want);
}

#[test]
fn pod_selector_exists_and_does_not_exist() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: Exists}]}
  ingress:
  - from:
    - podSelector: {matchExpressions: [{key: missing, operator: DoesNotExist}, {key: pod, operator: NotIn, values: [a]}]}",
    );
    // Every x pod is isolated; x/b and x/c (not a) may connect to any x pod.
    let want = Reach::all(true)
        .peer("*", "x/*", false)
        .peer("x/b", "x/*", true)
        .peer("x/c", "x/*", true);
    c.check("Exists/DoesNotExist/NotIn", &ALL_PROBES, &want);
}

#[test]
fn pod_and_namespace_selector_together_are_anded() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}",
    );
    let want = Reach::all(true)
        .peer("*", "x/a", false)
        .peer("y/b", "x/a", true);
    c.check("both (AND)", &ALL_PROBES, &want);
}

#[test]
fn pod_or_namespace_selector_as_two_peers() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}",
    );
    let want = Reach::all(true)
        .peer("*", "x/a", false)
        .peer("y/*", "x/a", true)
        .peer("x/b", "x/a", true);
    c.check("either (OR)", &ALL_PROBES, &want);
}

#[test]
fn any_pod_of_any_namespace() {
    let mut c = Cluster::new();
    // namespaceSelector {} with podSelector: pod=b anywhere.
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector: {matchLabels: {pod: b}}",
    );
    let want = Reach::all(true)
        .peer("*", "x/a", false)
        .peer("*/b", "x/a", true);
    c.check("any namespace, pod b", &ALL_PROBES, &want);
}

#[test]
fn numeric_port_and_protocol() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81}]",
    );
    let closed = Reach::all(true).peer("*", "x/a", false);
    c.check("port 81 open", &[TCP81], &Reach::all(true));
    c.check(
        "other ports closed",
        &[TCP80, UDP80, UDP81, SCTP80, SCTP81],
        &closed,
    );
}

#[test]
fn udp_only_does_not_allow_tcp_and_sctp_is_not_tcp() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - ports: [{port: 81, protocol: UDP}, {port: 80, protocol: SCTP}]",
    );
    let closed = Reach::all(true).peer("*", "x/a", false);
    c.check("open", &[UDP81, SCTP80], &Reach::all(true));
    c.check("closed", &[TCP80, TCP81, UDP80, SCTP81], &closed);
}

#[test]
fn port_without_number_allows_every_port_of_its_protocol() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{protocol: UDP}]",
    );
    c.check("udp open", &[UDP80, UDP81], &Reach::all(true));
    c.check(
        "rest closed",
        &[TCP80, TCP81, SCTP80, SCTP81],
        &Reach::all(true).peer("*", "x/*", false),
    );
}

#[test]
fn end_port_range() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: 81, endPort: 90, protocol: TCP}]",
    );
    c.check("81..90 open", &[TCP81], &Reach::all(true));
    let closed = Reach::all(true).peer("*", "x/*", false);
    c.check(
        "80 and other protocols closed",
        &[TCP80, UDP81, SCTP81],
        &closed,
    );
}

#[test]
fn egress_end_port_range() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 79, endPort: 80, protocol: UDP}]",
    );
    c.check("udp 79..80 open", &[UDP80], &Reach::all(true));
    c.check(
        "others closed",
        &[UDP81, TCP80],
        &Reach::all(true).peer("x/a", "*", false),
    );
}

#[test]
fn named_port_ingress() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: serve-80-tcp}, {port: serve-81-udp, protocol: UDP}]",
    );
    c.check("named open", &[TCP80, UDP81], &Reach::all(true));
    let closed = Reach::all(true).peer("*", "x/*", false);
    c.check("others closed", &[TCP81, UDP80, SCTP80], &closed);
}

#[test]
fn named_port_ingress_from_a_namespace() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
    ports: [{port: serve-80-tcp}]",
    );
    let y_only = Reach::all(true)
        .peer("*", "x/*", false)
        .peer("y/*", "x/*", true);
    c.check("80 from y", &[TCP80], &y_only);
    c.check(
        "81 closed",
        &[TCP81],
        &Reach::all(true).peer("*", "x/*", false),
    );
}

#[test]
fn named_port_egress_resolves_on_the_destination() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: serve-81-tcp}]",
    );
    // Every destination pod names 81/TCP serve-81-tcp.
    c.check("81 open", &[TCP81], &Reach::all(true));
    let closed = Reach::all(true).peer("x/*", "*", false);
    c.check("others closed", &[TCP80, UDP81], &closed);
}

#[test]
fn named_port_mismatched_protocol_matches_nothing() {
    let mut c = Cluster::new();
    // serve-80-tcp is a TCP port: asking for it as UDP resolves to nothing.
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: serve-80-tcp, protocol: UDP}]",
    );
    c.check(
        "closed",
        &ALL_PROBES,
        &Reach::all(true).peer("*", "x/*", false),
    );
}

#[test]
fn egress_to_pod_in_other_namespace() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}",
    );
    // No policyTypes: Ingress and Egress (it has egress rules); no ingress rules, so x/a
    // accepts nothing either.
    let want = Reach::all(true)
        .peer("x/a", "*", false)
        .peer("x/a", "y/b", true)
        .peer("*", "x/a", false);
    c.check("egress to y/b", &ALL_PROBES, &want);
}

#[test]
fn policy_types_egress_only_leaves_ingress_open() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: nobody}}}]}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {ns: y}}}]",
    );
    // The ingress rules are ignored: Ingress is not in policyTypes.
    let want = Reach::all(true)
        .peer("x/a", "*", false)
        .peer("x/a", "y/*", true);
    c.check("egress only", &ALL_PROBES, &want);
}

#[test]
fn client_egress_deny_wins_over_server_allow() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: deny-egress, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
    );
    c.apply(
        "metadata: {name: allow-ingress, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}]}]",
    );
    c.check(
        "x/a cannot send",
        &ALL_PROBES,
        &Reach::all(true).peer("x/a", "*", false),
    );
}

#[test]
fn ingress_and_egress_independent() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
  egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]",
    );
    let want = Reach::all(true)
        .peer("*", "x/a", false)
        .peer("x/b", "x/a", true)
        .peer("x/a", "*", false)
        .peer("x/a", "x/c", true);
    c.check("independent", &ALL_PROBES, &want);
}

#[test]
fn ip_block_with_except_egress() {
    let mut c = Cluster::new();
    // y's pods are 198.18.1.0/24 and fd00:18:0:1::/64; except y/b.
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 198.18.1.0/24, except: [198.18.1.11/32]}
    - ipBlock: {cidr: 'fd00:18:0:1::/64', except: ['fd00:18:0:1::11/128']}",
    );
    let want = Reach::all(true)
        .peer("x/a", "*", false)
        .peer("x/a", "y/a", true)
        .peer("x/a", "y/c", true);
    c.check("ipBlock except", &ALL_PROBES, &want);
}

#[test]
fn ip_in_both_cidr_and_except_is_allowed_by_another_rule() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 198.18.1.0/24, except: [198.18.1.11/32]}
    - ipBlock: {cidr: 'fd00:18:0:1::/64', except: ['fd00:18:0:1::11/128']}",
    );
    c.apply(
        "metadata: {name: q, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 198.18.1.11/32}
    - ipBlock: {cidr: 'fd00:18:0:1::11/128'}",
    );
    let want = Reach::all(true)
        .peer("x/a", "*", false)
        .peer("x/a", "y/*", true);
    c.check("except re-allowed", &ALL_PROBES, &want);
}

#[test]
fn ip_block_ingress_by_family() {
    let mut c = Cluster::new();
    // Only the IPv4 block: z's IPv4 addresses may connect, IPv6 ones may not.
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 198.18.2.0/24}}]}]",
    );
    let tables = LookupTables::build(c.models.iter().flat_map(|m| m.compiled().values()));
    let (z_a, x_a) = (ips(2, 0), ips(0, 0));
    assert!(tables.allowed(z_a[0], x_a[0], Proto::Tcp, 80));
    assert!(!tables.allowed(z_a[1], x_a[1], Proto::Tcp, 80));
    assert!(reference::allowed(
        &c.models[0],
        z_a[0],
        x_a[0],
        Proto::Tcp,
        80
    ));
    assert!(!reference::allowed(
        &c.models[0],
        z_a[1],
        x_a[1],
        Proto::Tcp,
        80
    ));
    // External addresses in the test ranges.
    let ext: IpAddr = "198.19.200.5"
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert!(!tables.allowed(ext, x_a[0], Proto::Tcp, 80));
    assert!(tables.allowed(x_a[0], ext, Proto::Tcp, 80));
}

#[test]
fn stacked_policies_are_a_union() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]",
    );
    c.apply(
        "metadata: {name: from-z, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 81}]}]",
    );
    let p80 = Reach::all(true)
        .peer("*", "x/*", false)
        .peer("y/*", "x/*", true);
    let p81 = Reach::all(true)
        .peer("*", "x/*", false)
        .peer("z/*", "x/a", true);
    c.check("80", &[TCP80], &p80);
    c.check("81", &[TCP81], &p81);
}

#[test]
fn allow_all_takes_precedence_over_narrower_policies() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: narrow, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]",
    );
    c.apply("metadata: {name: all, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{}]}");
    c.check("allow all wins", &ALL_PROBES, &Reach::all(true));
}

#[test]
fn updates_and_deletion() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
    );
    // Updated policy: from pod c instead.
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]",
    );
    c.check(
        "updated",
        &ALL_PROBES,
        &Reach::all(true)
            .peer("*", "x/a", false)
            .peer("x/c", "x/a", true),
    );
    c.each(|m| m.delete_policy("x", "p"));
    c.check("deleted", &ALL_PROBES, &Reach::all(true));
}

#[test]
fn namespace_and_pod_label_changes() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}",
    );
    // "should allow ingress access from updated namespace": z gets ns=y.
    let z = namespace("z", &[("ns", "y"), ("kubernetes.io/metadata.name", "z")]);
    c.each(|m| m.apply_namespace(&z));
    let want = Reach::all(true)
        .peer("*", "x/a", false)
        .peer("y/b", "x/a", true)
        .peer("z/b", "x/a", true);
    c.check("namespace relabelled", &ALL_PROBES, &want);
    // "should allow ingress access from updated pod": y/c becomes pod=b.
    let y_c = model_pod(1, 2, &[("pod", "b")]);
    c.each(|m| m.apply_pod(&y_c));
    c.check(
        "pod relabelled",
        &ALL_PROBES,
        &want.clone().peer("y/c", "x/a", true),
    );
    // "should deny ingress access to updated pod": x/b becomes pod=a, so it is isolated.
    let x_b = model_pod(0, 1, &[("pod", "a")]);
    c.each(|m| m.apply_pod(&x_b));
    let want = want
        .peer("y/c", "x/a", true)
        .peer("*", "x/b", false)
        .peer("y/b", "x/b", true)
        .peer("z/b", "x/b", true)
        .peer("y/c", "x/b", true);
    c.check("target relabelled", &ALL_PROBES, &want);
}

#[test]
fn finished_and_pending_pods_are_not_peers() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}]}]",
    );
    let mut done = model_pod(1, 0, &[("pod", "a")]);
    if let Some(s) = done.status.as_mut() {
        s.phase = Some("Succeeded".into());
    }
    c.each(|m| m.apply_pod(&done));
    let tables = LookupTables::build(c.models.iter().flat_map(|m| m.compiled().values()));
    let (y_a, x_a) = (ips(1, 0), ips(0, 0));
    // y/a's address is now no pod's: not a peer of a pod selector.
    assert!(!tables.allowed(y_a[0], x_a[0], Proto::Tcp, 80));
    assert!(!reference::allowed(
        &c.models[0],
        y_a[0],
        x_a[0],
        Proto::Tcp,
        80
    ));
    // Still allowed from the other pods.
    assert!(tables.allowed(ips(1, 1)[0], x_a[0], Proto::Tcp, 80));
}

#[test]
fn recompute_reports_only_affected_local_pods() {
    let mut m = PolicyModel::new("n1");
    for (i, ns) in NAMESPACES.iter().enumerate() {
        m.apply_namespace(&namespace(ns, &[("ns", ns)]));
        for (j, pod) in PODS.iter().enumerate() {
            m.apply_pod(&model_pod(i, j, &[("pod", pod)]));
        }
    }
    let first = m.recompute();
    // n1 holds pods 0, 2, 4, 6, 8: x/a, x/c, y/b, z/a, z/c.
    let keys = |v: &[super::ObjectKey]| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(keys(&first.updated), ["x/a", "x/c", "y/b", "z/a", "z/c"]);
    m.apply_policy(&policy(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
    ));
    assert_eq!(keys(&m.recompute().updated), ["x/a"]);
    // A pod that no policy names changes labels: nothing to recompile.
    m.apply_pod(&model_pod(2, 1, &[("pod", "b"), ("extra", "1")]));
    assert!(m.recompute().is_empty());
    // x/b (on n2) is the peer: x/a's entries change.
    m.apply_pod(&model_pod(0, 1, &[("pod", "other")]));
    assert_eq!(keys(&m.recompute().updated), ["x/a"]);
    m.delete_pod("x", "a");
    let gone = m.recompute();
    assert!(gone.updated.is_empty());
    assert_eq!(keys(&gone.removed), ["x/a"]);
}

#[test]
fn compiled_entries_shape() {
    let mut m = PolicyModel::new("n1");
    m.apply_namespace(&namespace("x", &[("ns", "x")]));
    m.apply_pod(&model_pod(0, 0, &[("pod", "a")]));
    m.apply_pod(&model_pod(0, 1, &[("pod", "b")]));
    m.apply_policy(&policy(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.0.0/24]}}]
    ports: [{port: 80}]
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 81, protocol: UDP}]",
    ));
    m.recompute();
    let key = super::ObjectKey::new("x", "a");
    let Some(compiled) = m.pod_policy(&key) else {
        panic!("x/a not compiled")
    };
    assert!(compiled.ingress.isolated && !compiled.egress.isolated);
    assert!(compiled.egress.entries.is_empty());
    let entries: Vec<String> = compiled
        .ingress
        .entries
        .iter()
        .map(|(p, s)| {
            let mut parts = Vec::new();
            for proto in Proto::ALL {
                for (lo, hi) in s.ranges(proto) {
                    parts.push(format!("{proto:?}:{lo}-{hi}"));
                }
            }
            format!("{p} {}", parts.join(","))
        })
        .collect();
    // The /16 allows TCP 80; the excepted /24 is an empty (deny) entry; x/b's addresses
    // (inside the except, and IPv6) allow UDP 81 only.
    assert_eq!(
        entries,
        [
            "198.18.0.0/16 Tcp:80-80",
            "198.18.0.0/24 ",
            "198.18.0.11/32 Udp:81-81",
            "fd00:18::11/128 Udp:81-81",
        ]
    );
}

#[test]
fn deny_ingress_from_other_namespaces() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: same-ns, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]",
    );
    let want = Reach::all(true)
        .peer("*", "x/*", false)
        .peer("x/*", "x/*", true);
    c.check("same namespace only", &ALL_PROBES, &want);
}

#[test]
fn ingress_from_pods_in_all_namespaces() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}",
    );
    c.apply(
        "metadata: {name: all-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}]}]",
    );
    let want = Reach::all(true)
        .peer("*", "x/*", false)
        .peer("*", "x/a", true);
    c.check("x/a from every namespace", &ALL_PROBES, &want);
}

#[test]
fn egress_allow_all_takes_precedence() {
    let mut c = Cluster::new();
    c.apply(
        "metadata: {name: to-y-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]",
    );
    let want = Reach::all(true).peer("x/a", "*", false);
    c.check("before, 81", &[TCP81, UDP80], &want);
    c.check(
        "before, 80",
        &[TCP80],
        &want.clone().peer("x/a", "y/*", true),
    );
    c.apply(
        "metadata: {name: all, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}",
    );
    c.check("allow all egress", &ALL_PROBES, &Reach::all(true));
}

#[test]
fn policy_types_default_needs_a_non_empty_egress_list() {
    let mut c = Cluster::new();
    // SetDefaults_NetworkPolicy: Egress only when len(spec.egress) != 0, so `egress: []`
    // isolates for ingress (no rules: deny) and leaves egress open.
    c.apply("metadata: {name: p, namespace: x}\nspec: {podSelector: {}, egress: []}");
    c.check(
        "egress [] defaulting",
        &ALL_PROBES,
        &Reach::all(true).peer("*", "x/*", false),
    );
}

#[test]
fn views_keep_what_the_semantics_read() {
    use super::{Peer, PodView, PolicyView, PortMatch, RulePort};

    // podIP alone (no podIPs) is used; host-network pods have no address of their own.
    let mut p = model_pod(0, 0, &[("pod", "a")]);
    if let Some(s) = p.status.as_mut() {
        s.pod_ips = None;
    }
    assert_eq!(PodView::of(&p).ips, [ips(0, 0)[0]]);
    let mut host = model_pod(0, 0, &[("pod", "a")]);
    if let Some(s) = host.spec.as_mut() {
        s.host_network = Some(true);
    }
    let host = PodView::of(&host);
    assert!(host.ips.is_empty() && !host.is_active());
    let mut failed = model_pod(0, 0, &[("pod", "a")]);
    if let Some(s) = failed.status.as_mut() {
        s.phase = Some("Failed".into());
    }
    assert!(!PodView::of(&failed).is_active());
    let running = PodView::of(&model_pod(0, 0, &[("pod", "a")]));
    assert!(running.is_active());
    assert_eq!(running.ports.len(), 6);
    assert_eq!(
        running
            .named_ports("serve-81-udp", Proto::Udp)
            .collect::<Vec<_>>(),
        [81]
    );
    assert_eq!(running.named_ports("serve-81-udp", Proto::Tcp).count(), 0);

    let v = PolicyView::of(&policy(
        "metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from:
    - {}
    - ipBlock: {cidr: 198.18.0.0/16}
      podSelector: {}
    - ipBlock: {cidr: 198.18.1.7/24, except: [198.18.1.0/28]}
    ports:
    - {port: http, endPort: 90}
    - {port: 81, endPort: 80}
    - {port: 0}
    - {port: 53, protocol: ICMP}
    - {port: 80, endPort: 81}
    - {protocol: SCTP}",
    ));
    assert!(v.ingress_type && !v.egress_type);
    let rule = &v.ingress[0];
    assert_eq!(rule.peers[0], Peer::Invalid, "a peer with nothing set");
    assert_eq!(rule.peers[1], Peer::Invalid, "ipBlock with a selector");
    let block = Peer::IpBlock {
        cidr: "198.18.1.0/24".parse().unwrap_or_else(|e| panic!("{e}")),
        except: vec!["198.18.1.0/28".parse().unwrap_or_else(|e| panic!("{e}"))],
    };
    assert_eq!(rule.peers[2], block, "host bits cleared");
    assert_eq!(
        &rule.ports[..4],
        &[
            RulePort::Invalid,
            RulePort::Invalid,
            RulePort::Invalid,
            RulePort::Invalid
        ]
    );
    assert_eq!(
        rule.ports[4],
        RulePort::Port {
            proto: Proto::Tcp,
            port: PortMatch::Range(80, 81)
        }
    );
    assert_eq!(
        rule.ports[5],
        RulePort::Port {
            proto: Proto::Sctp,
            port: PortMatch::Any
        }
    );
}

/// Scale: 10k pods (100 on this node) in 50 namespaces, 1k policies. Prints timings (never
/// asserted): `cargo test -p service-lb --lib model::policy::tests::scale -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; prints timings"]
fn scale_10k_pods_1k_policies() {
    use std::time::Instant;

    let mut m = PolicyModel::new("n0");
    let pod_at = |i: usize, app: usize| {
        let ns = format!("ns{}", i % 50);
        let v4 = format!("198.18.{}.{}", i / 250, i % 250 + 1);
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns),
                name: Some(format!("p{i}")),
                labels: Some(labels(&[("app", &format!("a{app}"))])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                // Spread over namespaces and apps: node n0 holds every 100th pod by i / 3.
                node_name: Some(format!("n{}", (i / 3) % 100)),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        container_port: 8080,
                        name: Some("http".into()),
                        ..ContainerPort::default()
                    }]),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(vec![PodIP { ip: v4 }]),
                ..PodStatus::default()
            }),
        }
    };
    let start = Instant::now();
    for n in 0..50 {
        m.apply_namespace(&namespace(
            &format!("ns{n}"),
            &[("team", &format!("t{}", n % 5))],
        ));
    }
    for i in 0..10_000 {
        m.apply_pod(&pod_at(i, i % 20));
    }
    for i in 0..1_000 {
        let ns = i % 50;
        let (app, peer) = (i % 20, (i + 1) % 20);
        let team = i % 5;
        m.apply_policy(&policy(&format!(
            "metadata: {{name: np{i}, namespace: ns{ns}}}
spec:
  podSelector: {{matchLabels: {{app: a{app}}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: a{peer}}}}}}}]
    ports: [{{port: http}}]
  - from: [{{namespaceSelector: {{matchLabels: {{team: t{team}}}}}, podSelector: {{matchLabels: {{app: a{peer}}}}}}}]
    ports: [{{port: 80, endPort: 90}}]
  - from: [{{ipBlock: {{cidr: 198.19.200.0/24, except: [198.19.200.0/28]}}}}]
  egress:
  - to: [{{namespaceSelector: {{matchLabels: {{team: t{team}}}}}}}]
    ports: [{{port: 53, protocol: UDP}}, {{port: http}}]"
        )));
    }
    let loaded = start.elapsed();
    let start = Instant::now();
    let first = m.recompute();
    let compile = start.elapsed();
    let tables = LookupTables::build(m.compiled().values());
    let (peers, blocks) = tables.sizes();
    println!(
        "load {loaded:?}; first compile of {} local pods {compile:?}; {peers} peer entries, \
         {blocks} port blocks",
        first.updated.len()
    );
    // A remote pod many policies name changes labels.
    let start = Instant::now();
    m.apply_pod(&pod_at(9_999, 7));
    let changed = m.recompute();
    println!(
        "pod relabel: {} local pods recompiled in {:?}",
        changed.updated.len(),
        start.elapsed()
    );
    // A local pod (on n0) changes labels.
    let start = Instant::now();
    m.apply_pod(&pod_at(300, 5));
    let changed = m.recompute();
    println!(
        "local pod relabel: {} local pods recompiled in {:?}",
        changed.updated.len(),
        start.elapsed()
    );
    let start = Instant::now();
    m.apply_namespace(&namespace("ns3", &[("team", "t0")]));
    let changed = m.recompute();
    println!(
        "namespace relabel: {} local pods recompiled in {:?}",
        changed.updated.len(),
        start.elapsed()
    );
    let start = Instant::now();
    m.delete_policy("ns0", "np0");
    let changed = m.recompute();
    println!(
        "policy delete: {} local pods recompiled in {:?}",
        changed.updated.len(),
        start.elapsed()
    );
    assert!(!first.updated.is_empty());
}
