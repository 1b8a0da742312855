//! End to end: NetworkPolicy truth tables on the upstream 3x3 model
//! (kubernetes `test/e2e/network/netpol/`: namespaces x, y, z labelled `ns`; pods a, b, c
//! labelled `pod`, serving 80 and 81 on TCP and UDP with container ports named
//! `serve-<port>-<proto>`), spread over two namespace "nodes", IPv4. Every pod has a
//! ClusterIP per port and protocol; each step probes every pod to every pod through the
//! ClusterIP and directly, TCP and UDP on 80 and 81, and compares with the matrix the
//! case expects, written as upstream writes it (`ExpectPeer` with wildcards, loopback
//! always allowed), never computed from our model.
//!
//! Until the daemon's policy sources are wired, the test drives the data path itself:
//! Kubernetes objects -> `PolicyModel` (one per node) -> `PolicyWriter` -> the node's
//! pinned maps. The cases are data (`cases()`), so the driver can be switched to the
//! daemon's manifests folder later.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use service_lb::dataplane::{policy_maps::BpfPolicyMaps, L4Proto};
use service_lb_tests::{
    netns::{run_in, sweep_leftovers},
    policy::{namespace, pod, policy, PolicyDriver},
    privileges::require_root,
    scenario::dataplane::{install, program, ClusterIp, Endpoint},
    servers::Servers,
    topology::{Cluster, ClusterSpec},
};

const NSS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// Pods by node: node 1 holds x/a..c and y/a, y/b; node 2 the rest.
const NODE1: [&str; 5] = ["xa", "xb", "xc", "ya", "yb"];
const NODE2: [&str; 4] = ["yc", "za", "zb", "zc"];
const PORTS: [u16; 2] = [80, 81];
/// A denied probe is a timeout; an allowed one answers in well under this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// An allowed-looking miss is tried once more with this (a slow machine, not a verdict).
const RETRY_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

/// `None` = any (upstream's wildcard peer).
#[derive(Clone, Copy, Debug)]
struct Sel {
    ns: Option<&'static str>,
    pod: Option<&'static str>,
}

const ALL: Sel = Sel {
    ns: None,
    pod: None,
};

fn ns(n: &'static str) -> Sel {
    Sel {
        ns: Some(n),
        pod: None,
    }
}

fn at(n: &'static str, p: &'static str) -> Sel {
    Sel {
        ns: Some(n),
        pod: Some(p),
    }
}

fn pod_sel(p: &'static str) -> Sel {
    Sel {
        ns: None,
        pod: Some(p),
    }
}

impl Sel {
    fn matches(&self, (n, p): (&str, &str)) -> bool {
        self.ns.is_none_or(|s| s == n) && self.pod.is_none_or(|s| s == p)
    }
}

/// One `ExpectPeer(from, to, allowed)` for the probes of `protos` x `ports`.
#[derive(Clone, Debug)]
struct Expect {
    protos: &'static [Proto],
    ports: &'static [u16],
    from: Sel,
    to: Sel,
    allowed: bool,
}

const BOTH: &[Proto] = &[Proto::Tcp, Proto::Udp];
const TCP: &[Proto] = &[Proto::Tcp];
const UDP: &[Proto] = &[Proto::Udp];
const ANY_PORT: &[u16] = &[80, 81];
const P80: &[u16] = &[80];
const P81: &[u16] = &[81];

fn peer(from: Sel, to: Sel, allowed: bool) -> Expect {
    Expect {
        protos: BOTH,
        ports: ANY_PORT,
        from,
        to,
        allowed,
    }
}

fn peer_on(
    protos: &'static [Proto],
    ports: &'static [u16],
    from: Sel,
    to: Sel,
    allowed: bool,
) -> Expect {
    Expect {
        protos,
        ports,
        from,
        to,
        allowed,
    }
}

/// What a step changes before it probes.
#[derive(Clone, Debug)]
enum Change {
    Apply(&'static str, &'static str, Value),
    Delete(&'static str, &'static str),
    /// Namespace labels (besides `ns` and `kubernetes.io/metadata.name`, always there).
    NsLabels(&'static str, Vec<(&'static str, &'static str)>),
    /// Pod labels (besides `pod`, always there).
    PodLabels(
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
    ),
}

#[derive(Clone, Debug)]
struct StepCase {
    changes: Vec<Change>,
    /// Applied in order over "everything allowed"; loopback is always allowed.
    expect: Vec<Expect>,
}

#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    steps: Vec<StepCase>,
}

fn case(name: &'static str, changes: Vec<Change>, expect: Vec<Expect>) -> Case {
    Case {
        name,
        steps: vec![StepCase { changes, expect }],
    }
}

fn apply(ns: &'static str, name: &'static str, spec: Value) -> Change {
    Change::Apply(ns, name, spec)
}

/// Pod IPs are only known once the topology exists: cases that name addresses get them.
struct Addrs {
    by_pod: BTreeMap<(String, String), IpAddr>,
}

impl Addrs {
    fn cidr32(&self, n: &str, p: &str) -> String {
        format!("{}/32", self.by_pod[&(n.to_owned(), p.to_owned())])
    }
}

/// The cases, after upstream's `network_policy.go` (names as there, shortened).
fn cases(addrs: &Addrs) -> Vec<Case> {
    let deny_ingress = json!({"podSelector": {}, "policyTypes": ["Ingress"]});
    let yb = addrs.cidr32("y", "b");
    vec![
        case(
            "default-deny-ingress",
            vec![apply("x", "deny", deny_ingress.clone())],
            vec![peer(ALL, ns("x"), false)],
        ),
        case(
            "default-deny-all",
            vec![apply(
                "x",
                "deny",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            vec![peer(ALL, ns("x"), false), peer(ns("x"), ALL, false)],
        ),
        case(
            "allow-from-pods-in-server-namespace-by-podSelector",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("x", "b"), at("x", "a"), true),
            ],
        ),
        case(
            "allow-ingress-for-a-target",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}),
            )],
            vec![],
        ),
        case(
            "allow-ingress-from-all-namespaces",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
            )],
            vec![],
        ),
        case(
            "allow-only-from-other-namespace-by-namespaceSelector",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            )],
            vec![peer(ALL, ns("x"), false), peer(ns("y"), ns("x"), true)],
        ),
        case(
            "podSelector-matchExpressions",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("x", "b"), at("x", "a"), true),
            ],
        ),
        case(
            "namespaceSelector-matchExpressions",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(ns("y"), at("x", "a"), true),
            ],
        ),
        case(
            "podSelector-or-namespaceSelector",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [
                     {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]}},
                     {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("x", "b"), at("x", "a"), true),
                peer(ns("y"), at("x", "a"), true),
                peer(ns("z"), at("x", "a"), true),
            ],
        ),
        case(
            "podSelector-and-namespaceSelector",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{
                     "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
                     "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("y", "b"), at("x", "a"), true),
                peer(at("z", "b"), at("x", "a"), true),
            ],
        ),
        case(
            "multiple-podSelectors-and-namespaceSelectors",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{
                     "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x"]}]},
                     "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("y", "b"), at("x", "a"), true),
                peer(at("y", "c"), at("x", "a"), true),
                peer(at("z", "b"), at("x", "a"), true),
                peer(at("z", "c"), at("x", "a"), true),
            ],
        ),
        case(
            "any-podSelectors",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                                       {"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("x", "b"), at("x", "a"), true),
                peer(at("x", "c"), at("x", "a"), true),
            ],
        ),
        case(
            "pod-in-other-namespace-by-podSelector-and-namespaceSelector",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                        "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("y", "a"), at("x", "a"), true),
            ],
        ),
        case(
            "ports",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                              "ports": [{"port": 81, "protocol": "TCP"}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer_on(TCP, P81, ns("y"), at("x", "a"), true),
            ],
        ),
        case(
            "multiple-stacked-policies-overlapping-podSelectors",
            vec![
                apply(
                    "x",
                    "p81",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}},
                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 81}]}]}),
                ),
                apply(
                    "x",
                    "p80",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}},
                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]}),
                ),
            ],
            vec![
                peer(ALL, at("x", "a"), false),
                peer_on(TCP, ANY_PORT, ns("y"), at("x", "a"), true),
            ],
        ),
        case(
            "allow-all",
            vec![apply("x", "p", json!({"podSelector": {}, "ingress": [{}]}))],
            vec![],
        ),
        case(
            "allow-ingress-on-one-named-port",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
            )],
            vec![
                peer(ALL, ns("x"), false),
                peer_on(TCP, P81, ALL, ns("x"), true),
            ],
        ),
        case(
            "allow-ingress-from-namespace-on-one-named-port",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                              "ports": [{"port": "serve-80-tcp"}]}]}),
            )],
            vec![
                peer(ALL, ns("x"), false),
                peer_on(TCP, P80, ns("y"), ns("x"), true),
            ],
        ),
        case(
            "allow-egress-on-one-named-port",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                 "egress": [{"ports": [{"port": "serve-80-udp", "protocol": "UDP"}]}]}),
            )],
            vec![
                peer(ns("x"), ALL, false),
                peer_on(UDP, P80, ns("x"), ALL, true),
            ],
        ),
        Case {
            name: "enforce-updated-policy",
            steps: vec![
                StepCase {
                    changes: vec![apply(
                        "x",
                        "p",
                        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 81}]}]}),
                    )],
                    expect: vec![
                        peer(ALL, ns("x"), false),
                        peer_on(TCP, P81, ALL, ns("x"), true),
                    ],
                },
                StepCase {
                    changes: vec![apply(
                        "x",
                        "p",
                        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
                    )],
                    expect: vec![
                        peer(ALL, ns("x"), false),
                        peer_on(TCP, P80, ALL, ns("x"), true),
                    ],
                },
            ],
        },
        Case {
            name: "allow-ingress-from-updated-namespace",
            steps: vec![
                StepCase {
                    changes: vec![apply(
                        "x",
                        "p",
                        json!({"podSelector": {"matchLabels": {"pod": "a"}},
                           "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}]}),
                    )],
                    expect: vec![peer(ALL, at("x", "a"), false)],
                },
                StepCase {
                    changes: vec![Change::NsLabels("y", vec![("ns2", "updated")])],
                    expect: vec![
                        peer(ALL, at("x", "a"), false),
                        peer(ns("y"), at("x", "a"), true),
                    ],
                },
            ],
        },
        Case {
            name: "allow-ingress-from-updated-pod",
            steps: vec![
                StepCase {
                    changes: vec![apply(
                        "x",
                        "p",
                        json!({"podSelector": {"matchLabels": {"pod": "a"}},
                           "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod2": "updated"}}}]}]}),
                    )],
                    expect: vec![peer(ALL, at("x", "a"), false)],
                },
                StepCase {
                    changes: vec![Change::PodLabels("x", "b", vec![("pod2", "updated")])],
                    expect: vec![
                        peer(ALL, at("x", "a"), false),
                        peer(at("x", "b"), at("x", "a"), true),
                    ],
                },
            ],
        },
        case(
            "deny-ingress-from-other-namespaces",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            )],
            vec![peer(ns("y"), ns("x"), false), peer(ns("z"), ns("x"), false)],
        ),
        Case {
            name: "deny-ingress-to-updated-pod",
            steps: vec![
                StepCase {
                    changes: vec![apply(
                        "x",
                        "p",
                        json!({"podSelector": {"matchLabels": {"target": "isolated"}}, "policyTypes": ["Ingress"]}),
                    )],
                    expect: vec![],
                },
                StepCase {
                    changes: vec![Change::PodLabels("x", "a", vec![("target", "isolated")])],
                    expect: vec![peer(ALL, at("x", "a"), false)],
                },
                StepCase {
                    changes: vec![Change::PodLabels("x", "a", vec![])],
                    expect: vec![],
                },
            ],
        },
        case(
            "deny-egress-by-podSelector",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
            )],
            vec![peer(at("x", "a"), ALL, false)],
        ),
        case(
            "deny-egress-from-all-pods-in-namespace",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
            vec![peer(ns("x"), ALL, false)],
        ),
        case(
            "ingress-and-egress-together",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
                 "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("x", "b"), at("x", "a"), true),
                peer(at("x", "a"), ALL, false),
                peer(at("x", "a"), ns("y"), true),
            ],
        ),
        case(
            "deny-egress-on-client-even-if-server-allows",
            vec![
                apply(
                    "x",
                    "p",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}},
                      "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
                ),
                apply(
                    "y",
                    "allow-xa",
                    json!({"podSelector": {"matchLabels": {"pod": "b"}},
                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
                ),
            ],
            // No policyTypes and egress rules: x/a is isolated for ingress too (nothing in).
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("x", "a"), ALL, false),
                peer(at("x", "a"), at("y", "a"), true),
                peer(ALL, at("y", "b"), false),
            ],
        ),
        case(
            "egress-to-pod-in-other-namespace-by-podSelector-and-namespaceSelector",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
            )],
            vec![
                peer(at("x", "a"), ALL, false),
                peer(at("x", "a"), at("y", "a"), true),
            ],
        ),
        case(
            "ingress-any-port-on-one-protocol",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"ports": [{"protocol": "TCP"}]}]}),
            )],
            vec![peer_on(UDP, ANY_PORT, ALL, at("x", "a"), false)],
        ),
        case(
            "namespaceSelector-by-default-metadata-name-label",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(ns("y"), at("x", "a"), true),
            ],
        ),
        case(
            "egress-cidr-with-except",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": "198.18.0.0/16", "except": [yb.clone()]}}]}]}),
            )],
            vec![peer(at("x", "a"), at("y", "b"), false)],
        ),
        case(
            "ip-in-both-cidr-and-except-is-allowed",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": "198.18.0.0/16", "except": [yb.clone()]}}]},
                            {"to": [{"ipBlock": {"cidr": yb.clone()}}]}]}),
            )],
            vec![],
        ),
        case(
            "egress-to-server-in-cidr",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": yb.clone()}}]}]}),
            )],
            vec![
                peer(at("x", "a"), ALL, false),
                peer(at("x", "a"), at("y", "b"), true),
            ],
        ),
        case(
            "ingress-and-egress-controlled-independently",
            vec![
                apply(
                    "x",
                    "deny-egress",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
                ),
                apply(
                    "x",
                    "allow-egress-to-b",
                    json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                      "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
                ),
            ],
            vec![
                peer(at("x", "a"), ALL, false),
                peer(at("x", "a"), at("x", "b"), true),
            ],
        ),
        case(
            "udp-only-policy-denies-tcp",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer_on(UDP, P81, ALL, at("x", "a"), true),
            ],
        ),
        case(
            "end-port-range",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                              "ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer_on(TCP, ANY_PORT, ns("y"), at("x", "a"), true),
            ],
        ),
        case(
            "end-port-range-excludes-the-next-port",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"ports": [{"port": 70, "endPort": 80, "protocol": "UDP"}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer_on(UDP, P80, ALL, at("x", "a"), true),
            ],
        ),
        Case {
            name: "egress-allow-all-takes-precedence",
            steps: vec![
                StepCase {
                    changes: vec![apply(
                        "x",
                        "p80",
                        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                           "egress": [{"ports": [{"port": 80}]}]}),
                    )],
                    expect: vec![
                        peer(at("x", "a"), ALL, false),
                        peer_on(TCP, P80, at("x", "a"), ALL, true),
                    ],
                },
                StepCase {
                    changes: vec![apply(
                        "x",
                        "all",
                        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                           "egress": [{}]}),
                    )],
                    expect: vec![],
                },
            ],
        },
        Case {
            name: "stop-enforcing-after-deletion",
            steps: vec![
                StepCase {
                    changes: vec![
                        apply("x", "deny", deny_ingress.clone()),
                        apply("y", "deny", deny_ingress.clone()),
                    ],
                    expect: vec![peer(ALL, ns("x"), false), peer(ALL, ns("y"), false)],
                },
                StepCase {
                    changes: vec![Change::Delete("x", "deny")],
                    expect: vec![peer(ALL, ns("y"), false)],
                },
                StepCase {
                    changes: vec![Change::Delete("y", "deny")],
                    expect: vec![],
                },
            ],
        },
        case(
            "policy-types-defaulting-with-egress-rules",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                 "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            vec![
                peer(ALL, at("x", "a"), false),
                peer(at("x", "a"), ALL, false),
                peer(at("x", "a"), at("x", "b"), true),
            ],
        ),
        case(
            "policy-types-egress-only-leaves-ingress-open",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
            )],
            vec![
                peer(at("x", "a"), ALL, false),
                peer(at("x", "a"), ns("z"), true),
            ],
        ),
        case(
            "podSelector-exists",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]}}]},
                            ]}),
            )],
            vec![],
        ),
        case(
            "podSelector-does-not-exist",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {},
                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}}]}]}),
            )],
            vec![peer(ALL, ns("x"), false)],
        ),
        case(
            "ingress-from-all-pods-of-one-label-in-any-namespace",
            vec![apply(
                "z",
                "p",
                json!({"podSelector": {},
                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
            )],
            vec![peer(ALL, ns("z"), false), peer(pod_sel("c"), ns("z"), true)],
        ),
        case(
            "egress-to-namespace-on-port-81",
            vec![apply(
                "y",
                "p",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}], "ports": [{"port": 81}, {"port": 81, "protocol": "UDP"}]}]}),
            )],
            vec![
                peer(ns("y"), ALL, false),
                peer_on(BOTH, P81, ns("y"), ns("x"), true),
            ],
        ),
        Case {
            name: "namespace-label-change-drops-access",
            steps: vec![
                StepCase {
                    changes: vec![
                        Change::NsLabels("z", vec![("team", "blue")]),
                        apply(
                            "x",
                            "p",
                            json!({"podSelector": {},
                                         "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}),
                        ),
                    ],
                    expect: vec![peer(ALL, ns("x"), false), peer(ns("z"), ns("x"), true)],
                },
                StepCase {
                    changes: vec![Change::NsLabels("z", vec![])],
                    expect: vec![peer(ALL, ns("x"), false)],
                },
            ],
        },
    ]
}

/// Expected reachability of `from` -> `to` for (proto, port).
fn expected(
    step: &StepCase,
    from: (&str, &str),
    to: (&str, &str),
    proto: Proto,
    port: u16,
) -> bool {
    if from == to {
        return true; // loopback, as upstream's AllowLoopback
    }
    let mut allowed = true;
    for e in &step.expect {
        if e.protos.contains(&proto)
            && e.ports.contains(&port)
            && e.from.matches(from)
            && e.to.matches(to)
        {
            allowed = e.allowed;
        }
    }
    allowed
}

/// One probe's target and how it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Via {
    ClusterIp,
    Direct,
}

fn probe(addr: SocketAddr, proto: Proto, timeout: Duration) -> bool {
    match proto {
        Proto::Tcp => TcpStream::connect_timeout(&addr, timeout).is_ok_and(|s| {
            let _ = s.set_read_timeout(Some(timeout));
            let mut buf = [0u8; 64];
            std::io::Read::read(&mut &s, &mut buf).is_ok_and(|n| n > 0)
        }),
        Proto::Udp => (|| -> std::io::Result<bool> {
            // A source port never used before in the run: a datagram on the tuple of an
            // earlier allowed flow would be that flow (stateful), not a new one.
            let port = next_udp_port();
            let s = UdpSocket::bind(if addr.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], port))
            } else {
                SocketAddr::from(([0u16; 8], port))
            })?;
            s.connect(addr)?;
            s.set_read_timeout(Some(timeout))?;
            s.send(b"q\n")?;
            let mut buf = [0u8; 128];
            Ok(s.recv(&mut buf).is_ok_and(|n| n > 0))
        })()
        .unwrap_or(false),
    }
}

type Key = (Via, Proto, u16);

static NEXT_UDP_PORT: AtomicU32 = AtomicU32::new(0);

/// Source ports for UDP probes, unique within a run (20000..60000, then wrapping).
fn next_udp_port() -> u16 {
    let p = NEXT_UDP_PORT.fetch_add(1, Ordering::Relaxed);
    20_000 + (p % 40_000) as u16
}

/// passed/total per (via, proto, port) and the mismatches.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<Key, (u32, u32)>,
    /// Probes whose expected answer is "denied" (a timeout).
    expected_denied: u32,
    wrong: Vec<String>,
}

struct World<'a> {
    cluster: &'a Cluster,
    /// (ns, pod) -> topology pod name.
    names: BTreeMap<(String, String), String>,
    vips: BTreeMap<(String, String, Proto, u16), SocketAddr>,
    drivers: Vec<PolicyDriver<BpfPolicyMaps>>,
}

impl World<'_> {
    fn pods(&self) -> Vec<(String, String)> {
        self.names.keys().cloned().collect()
    }

    fn apply_change(&mut self, change: &Change) -> Result<()> {
        for d in &mut self.drivers {
            match change {
                Change::Apply(n, name, spec) => {
                    d.model.apply_policy(&policy(n, name, spec.clone())?)
                }
                Change::Delete(n, name) => d.model.delete_policy(n, name),
                Change::NsLabels(n, extra) => d.model.apply_namespace(&ns_object(n, extra)?),
                Change::PodLabels(n, p, extra) => {
                    d.model
                        .apply_pod(&self_pod(self.cluster, &self.names, n, p, extra)?)
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        for d in &mut self.drivers {
            d.sync()?;
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        for d in &mut self.drivers {
            let policies: Vec<(String, String)> = d
                .model
                .policies()
                .map(|p| (p.key.namespace.clone(), p.key.name.clone()))
                .collect();
            for (n, p) in policies {
                d.model.delete_policy(&n, &p);
            }
            for n in NSS {
                d.model.apply_namespace(&ns_object(n, &[])?);
            }
            for (n, p) in self.names.keys() {
                d.model
                    .apply_pod(&self_pod(self.cluster, &self.names, n, p, &[])?);
            }
        }
        self.sync()
    }

    /// Probes every pair both ways, every (via, proto, port); counts into `tally`.
    fn probe_all(
        &self,
        case: &str,
        step_no: usize,
        step: &StepCase,
        tally: &mut Tally,
    ) -> Result<()> {
        let pods = self.pods();
        let mut results: Vec<(String, String, String, String, Key, bool, bool)> = Vec::new();
        std::thread::scope(|scope| -> Result<()> {
            let mut handles = Vec::new();
            for from in &pods {
                let client = self.cluster.pod(&self.names[from])?;
                let mut targets = Vec::new();
                for to in &pods {
                    for via in [Via::ClusterIp, Via::Direct] {
                        for proto in [Proto::Tcp, Proto::Udp] {
                            for port in PORTS {
                                let addr = match via {
                                    Via::Direct => SocketAddr::new(
                                        self.cluster.pod(&self.names[to])?.addr(false),
                                        port,
                                    ),
                                    Via::ClusterIp => {
                                        self.vips[&(to.0.clone(), to.1.clone(), proto, port)]
                                    }
                                };
                                let want =
                                    expected(step, (&from.0, &from.1), (&to.0, &to.1), proto, port);
                                targets.push((to.clone(), (via, proto, port), addr, want));
                            }
                        }
                    }
                }
                let from = from.clone();
                handles.push(scope.spawn(move || {
                    run_in(&client.ns, || {
                        // One thread per probe inside the client's namespace (threads
                        // inherit it): all probes of the step run at once.
                        let got: Vec<bool> = std::thread::scope(|inner| {
                            let hs: Vec<_> = targets
                                .iter()
                                .map(|(_, (_, proto, _), addr, want)| {
                                    let (addr, proto, want) = (*addr, *proto, *want);
                                    inner.spawn(move || {
                                        let ok = probe(addr, proto, PROBE_TIMEOUT);
                                        // A miss where an answer is expected: once more, slower.
                                        if !ok && want {
                                            probe(addr, proto, RETRY_TIMEOUT)
                                        } else {
                                            ok
                                        }
                                    })
                                })
                                .collect();
                            hs.into_iter().map(|h| h.join().unwrap_or(false)).collect()
                        });
                        Ok(targets
                            .into_iter()
                            .zip(got)
                            .map(|((to, key, _, want), got)| {
                                (from.0.clone(), from.1.clone(), to.0, to.1, key, want, got)
                            })
                            .collect::<Vec<_>>())
                    })
                }));
            }
            for h in handles {
                let r = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
                results.extend(r);
            }
            Ok(())
        })?;
        for (fns, fp, tns, tp, key, want, got) in results {
            let c = tally.counts.entry(key).or_default();
            c.1 += 1;
            tally.expected_denied += u32::from(!want);
            if want == got {
                c.0 += 1;
            } else {
                tally.wrong.push(format!(
                    "{case} step {step_no}: {fns}/{fp} -> {tns}/{tp} {:?} {:?}/{}: expected {}, got {}",
                    key.0, key.1, key.2,
                    if want { "allowed" } else { "denied" },
                    if got { "allowed" } else { "denied" }
                ));
            }
        }
        Ok(())
    }
}

fn ns_object(
    n: &str,
    extra: &[(&'static str, &'static str)],
) -> Result<k8s_openapi::api::core::v1::Namespace> {
    let mut labels = vec![("ns", n), ("kubernetes.io/metadata.name", n)];
    labels.extend_from_slice(extra);
    namespace(n, &labels)
}

const CONTAINER_PORTS: [(&str, u16, &str); 4] = [
    ("serve-80-tcp", 80, "TCP"),
    ("serve-81-tcp", 81, "TCP"),
    ("serve-80-udp", 80, "UDP"),
    ("serve-81-udp", 81, "UDP"),
];

fn self_pod(
    cluster: &Cluster,
    names: &BTreeMap<(String, String), String>,
    n: &str,
    p: &str,
    extra: &[(&'static str, &'static str)],
) -> Result<k8s_openapi::api::core::v1::Pod> {
    let tp = cluster.pod(&names[&(n.to_owned(), p.to_owned())])?;
    let mut labels = vec![("pod", p)];
    labels.extend_from_slice(extra);
    pod(
        n,
        p,
        &labels,
        &format!("n{}", tp.node),
        &[tp.v4.into(), tp.v6.into()],
        &CONTAINER_PORTS,
    )
}

#[test]
fn e2e_netpol() -> Result<()> {
    if !require_root("e2e_netpol") {
        return Ok(());
    }
    let started = Instant::now();
    for leftover in sweep_leftovers() {
        eprintln!("removed a leftover of an earlier run: {leftover}");
    }
    let spec = ClusterSpec::new(&[&NODE1, &NODE2]);
    let cluster = Cluster::new(&spec).context("building the namespace topology")?;
    let mut attachments = Vec::new();
    for node in &cluster.nodes {
        attachments.push(install(node)?);
    }
    // Servers: every pod on 80 and 81, TCP and UDP.
    let mut names = BTreeMap::new();
    let mut servers = Vec::new();
    for n in NSS {
        for p in PODS {
            let name = format!("{n}{p}");
            let tp = cluster.pod(&name)?;
            let socks: Vec<SocketAddr> = PORTS
                .iter()
                .map(|&port| SocketAddr::new(tp.v4.into(), port))
                .collect();
            servers.push(Servers::start(&tp.ns, &name, &socks, &socks)?);
            names.insert((n.to_owned(), p.to_owned()), name);
        }
    }
    // A ClusterIP per pod, port and protocol, programmed on both nodes.
    let mut vips = BTreeMap::new();
    let mut services = Vec::new();
    for (i, ((n, p), name)) in names.iter().enumerate() {
        let tp = cluster.pod(name)?;
        for (j, proto) in [Proto::Tcp, Proto::Udp].into_iter().enumerate() {
            for port in PORTS {
                let vip: SocketAddr = format!("198.19.0.{}:{port}", 10 + 2 * i + j).parse()?;
                services.push(ClusterIp {
                    vip,
                    proto: if proto == Proto::Tcp {
                        L4Proto::Tcp
                    } else {
                        L4Proto::Udp
                    },
                    endpoints: vec![Endpoint {
                        addr: SocketAddr::new(tp.v4.into(), port),
                        node: tp.node,
                    }],
                });
                vips.insert((n.clone(), p.clone(), proto, port), vip);
            }
        }
    }
    for node in &cluster.nodes {
        program(node, &services)?;
    }
    let mut drivers = Vec::new();
    for node in &cluster.nodes {
        drivers.push(PolicyDriver::new(
            &node.name,
            BpfPolicyMaps::open_pinned(node.bpffs.path())?,
        ));
    }
    let mut world = World {
        cluster: &cluster,
        names,
        vips,
        drivers,
    };
    world.reset()?;
    let addrs = Addrs {
        by_pod: world
            .names
            .iter()
            .map(|(k, name)| Ok((k.clone(), cluster.pod(name)?.addr(false))))
            .collect::<Result<_>>()?,
    };
    // Warm-up: no policy, every probe answers (neighbours resolved, servers up).
    let mut warm = Tally::default();
    let open = StepCase {
        changes: vec![],
        expect: vec![],
    };
    world.probe_all("no-policy", 0, &open, &mut warm)?;

    let mut tally = Tally::default();
    let cases = cases(&addrs);
    let mut steps = 0;
    for case in &cases {
        world.reset()?;
        for (k, step) in case.steps.iter().enumerate() {
            for change in &step.changes {
                world.apply_change(change)?;
            }
            world.sync()?;
            let t0 = Instant::now();
            world.probe_all(case.name, k, step, &mut tally)?;
            steps += 1;
            eprintln!("{} step {k}: probed in {:?}", case.name, t0.elapsed());
        }
    }
    world.reset()?;
    drop(world);
    drop(servers);
    drop(attachments);
    drop(cluster);

    eprintln!(
        "warm-up (no policy): {} wrong of {}",
        warm.wrong.len(),
        warm.counts.values().map(|c| c.1).sum::<u32>()
    );
    eprintln!(
        "{} cases, {steps} steps, {} probes expected denied, {:?}",
        cases.len(),
        tally.expected_denied,
        started.elapsed()
    );
    for ((via, proto, port), (ok, total)) in &tally.counts {
        eprintln!("{via:?} {proto:?}/{port}: {ok}/{total} as expected");
    }
    let mut by: BTreeMap<(Via, Proto), (u32, u32)> = BTreeMap::new();
    for ((via, proto, _), (ok, total)) in &tally.counts {
        let e = by.entry((*via, *proto)).or_default();
        e.0 += ok;
        e.1 += total;
    }
    for ((via, proto), (ok, total)) in &by {
        eprintln!("SUMMARY {via:?} {proto:?}: {ok}/{total}");
    }
    for w in warm.wrong.iter().chain(&tally.wrong).take(60) {
        eprintln!("MISMATCH {w}");
    }
    assert!(cases.len() >= 40, "{} cases", cases.len());
    assert!(
        warm.wrong.is_empty(),
        "{} probes failed with no policy",
        warm.wrong.len()
    );
    assert!(
        tally.wrong.is_empty(),
        "{} probes disagree with the truth tables",
        tally.wrong.len()
    );
    Ok(())
}
