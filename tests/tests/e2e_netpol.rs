//! End to end: NetworkPolicy truth tables on the upstream 3x3 model
//! (kubernetes `test/e2e/network/netpol/`: namespaces x, y, z labelled `ns`; pods a, b, c
//! labelled `pod`, serving 80 and 81 on TCP and UDP with container ports named
//! `serve-<port>-<proto>`), spread over two namespace "nodes", dual-stack. Every pod has a
//! dual-stack Service with ports 80 and 81 on TCP and UDP; each step probes every pod to
//! every pod through the ClusterIP and directly, IPv4 and IPv6, TCP and UDP on 80 and 81,
//! and compares with the matrix the case expects, written as upstream writes it
//! (`ExpectPeer` with wildcards, loopback always allowed), never computed from our model.
//!
//! Driven through the real daemon: one `service-lb run --manifests DIR` per node, and
//! every Namespace, Pod, Service, EndpointSlice and NetworkPolicy is a file in DIR, as a
//! user (or the API source) would give them. A step writes its files, then waits until
//! each daemon's policy snapshot (`/run/service-lb/.../policy.json`, written after the
//! maps are programmed) holds what a model fed the same objects compiles: that is only
//! the "programmed" signal; the verdicts are the probes'.
//!
//! After the cases: the policy change -> enforcement latency for new connections (allow
//! -> deny and deny -> allow, 20 rounds, printed, never asserted) and what an
//! established TCP stream does when a policy starts denying it (it keeps working: its
//! flow is in the allowed-flow LRU, `docs/limitations.md`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use service_lb::{
    daemon::policy::snapshot_path,
    model::policy::{
        snapshot::{DirectionSnapshot, PolicySnapshot},
        PolicyModel,
    },
};
use service_lb_tests::{
    daemon::{
        frontend_key, start_per_node, wait_frontends, EndpointSpec, ManifestDir, PortSpec,
        ServiceManifest, SliceManifest,
    },
    netns::{run_in, sweep_leftovers, NetNs},
    policy::{namespace, pod, policy},
    privileges::require_root,
    servers::{HeldConnection, Servers},
    topology::{Cluster, ClusterSpec},
};

const NSS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
/// Pods by node: node 1 holds x/a..c and y/a, y/b; node 2 the rest.
const NODE1: [&str; 5] = ["xa", "xb", "xc", "ya", "yb"];
const NODE2: [&str; 4] = ["yc", "za", "zb", "zc"];
const PORTS: [u16; 2] = [80, 81];
/// Timeout of a probe expected to answer; a miss is tried once more with [`RETRY_TIMEOUT`]
/// (a slow machine, not a verdict).
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
const RETRY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Shortest wait of a probe expected to be denied (a drop: it can only time out); it
/// waits longer when the step's answers are slow ([`patience`]).
const DENY_TIMEOUT: Duration = Duration::from_millis(200);
/// Bound on a daemon programming a step's change.
const PROGRAM_BOUND: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn v6(self) -> bool {
        self == Fam::V6
    }

    fn index(self) -> usize {
        usize::from(self.v6())
    }
}

const FAMS: [Fam; 2] = [Fam::V4, Fam::V6];

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
    fams: &'static [Fam],
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
        fams: &FAMS,
        protos: BOTH,
        ports: ANY_PORT,
        from,
        to,
        allowed,
    }
}

/// [`peer`] for the probes of one address family only.
fn peer_fam(fams: &'static [Fam], from: Sel, to: Sel, allowed: bool) -> Expect {
    Expect {
        fams,
        ..peer(from, to, allowed)
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
        fams: &FAMS,
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
    by_pod: BTreeMap<(String, String), [IpAddr; 2]>,
}

impl Addrs {
    /// The pod's host prefix in `fam` (`/32` or `/128`).
    fn host(&self, n: &str, p: &str, fam: Fam) -> String {
        let ip = self.by_pod[&(n.to_owned(), p.to_owned())][fam.index()];
        format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
    }
}

/// Every pod CIDR of the topology, per family (upstream's ipBlock cases take the pods'
/// family; dual-stack, a case names both families' blocks so its matrix holds for both).
const POD_RANGES: [&str; 2] = ["198.18.0.0/16", "fd00:18::/48"];
const V6_ONLY: &[Fam] = &[Fam::V6];

/// The cases, after upstream's `network_policy.go` (names as there, shortened).
fn cases(addrs: &Addrs) -> Vec<Case> {
    let deny_ingress = json!({"podSelector": {}, "policyTypes": ["Ingress"]});
    let yb = [addrs.host("y", "b", Fam::V4), addrs.host("y", "b", Fam::V6)];
    // ipBlock peers: the pod range minus y/b, and y/b itself, in both families.
    let range_but_yb: Vec<Value> = (0..2)
        .map(|f| json!({"ipBlock": {"cidr": POD_RANGES[f], "except": [yb[f].clone()]}}))
        .collect();
    let only_yb: Vec<Value> = yb.iter().map(|c| json!({"ipBlock": {"cidr": c}})).collect();
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
                 "egress": [{"to": range_but_yb.clone()}]}),
            )],
            vec![peer(at("x", "a"), at("y", "b"), false)],
        ),
        case(
            "ip-in-both-cidr-and-except-is-allowed",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": range_but_yb.clone()}, {"to": only_yb.clone()}]}),
            )],
            vec![],
        ),
        case(
            "egress-to-server-in-cidr",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": only_yb.clone()}]}),
            )],
            vec![
                peer(at("x", "a"), ALL, false),
                peer(at("x", "a"), at("y", "b"), true),
            ],
        ),
        // Dual-stack only (upstream runs one family): an ipBlock of one family allows
        // nothing of the other.
        case(
            "egress-ipBlock-of-one-family",
            vec![apply(
                "x",
                "p",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": POD_RANGES[0]}}]}]}),
            )],
            vec![peer_fam(V6_ONLY, at("x", "a"), ALL, false)],
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

/// Expected reachability of `from` -> `to` for (fam, proto, port).
fn expected(
    step: &StepCase,
    from: (&str, &str),
    to: (&str, &str),
    (fam, proto, port): (Fam, Proto, u16),
) -> bool {
    if from == to {
        return true; // loopback, as upstream's AllowLoopback
    }
    let mut allowed = true;
    for e in &step.expect {
        if e.fams.contains(&fam)
            && e.protos.contains(&proto)
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

/// The slowest answer of a step so far (µs), shared by its probes.
type Slowest = AtomicU64;

/// How long a probe waits before its silence counts as "denied": `timeout` for a probe
/// expected to answer; for one expected to be denied, twice the slowest answer of the
/// step so far, within [`DENY_TIMEOUT`]..[`PROBE_TIMEOUT`] (a drop only ever times out;
/// an allowed flow answers in a few ms, later on a loaded machine).
fn patience(want: bool, timeout: Duration, slowest: &Slowest) -> Duration {
    if want {
        timeout
    } else {
        (Duration::from_micros(slowest.load(Ordering::Relaxed)) * 2)
            .clamp(DENY_TIMEOUT, PROBE_TIMEOUT)
    }
}

/// One request/answer: (how long the answer took if one came, how long it waited).
/// Async: a step's probes from one client are futures on one thread inside the client's
/// namespace (a thread per probe made the answers of a loaded machine slow).
async fn probe(
    addr: SocketAddr,
    proto: Proto,
    want: bool,
    timeout: Duration,
    slowest: &Slowest,
) -> (Option<Duration>, Duration) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let work = async {
        let mut buf = [0u8; 128];
        let n = match proto {
            Proto::Tcp => {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                s.read(&mut buf).await.ok()?
            }
            Proto::Udp => {
                // A source port never used before in the run: a datagram on the tuple of
                // an earlier allowed flow would be that flow (stateful), not a new one.
                let port = next_udp_port();
                let bind = if addr.is_ipv4() {
                    SocketAddr::from(([0, 0, 0, 0], port))
                } else {
                    SocketAddr::from(([0u16; 8], port))
                };
                let s = tokio::net::UdpSocket::bind(bind).await.ok()?;
                s.connect(addr).await.ok()?;
                s.send(b"q\n").await.ok()?;
                s.recv(&mut buf).await.ok()?
            }
        };
        (n > 0).then_some(())
    };
    tokio::pin!(work);
    loop {
        let left = patience(want, timeout, slowest).saturating_sub(started.elapsed());
        if left.is_zero() {
            return (None, started.elapsed());
        }
        match tokio::time::timeout(left.min(Duration::from_millis(20)), &mut work).await {
            Ok(Some(())) => {
                let took = started.elapsed();
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                slowest.fetch_max(us, Ordering::Relaxed);
                return (Some(took), took);
            }
            // Refused, reset: no answer.
            Ok(None) => return (None, started.elapsed()),
            Err(_) => {}
        }
    }
}

type Key = (Fam, Via, Proto, u16);

static NEXT_UDP_PORT: AtomicU32 = AtomicU32::new(0);

/// Source ports for UDP probes, unique within a run (10000..65000, then wrapping; a run
/// sends about 37,000 UDP probes).
fn next_udp_port() -> u16 {
    let p = NEXT_UDP_PORT.fetch_add(1, Ordering::Relaxed);
    10_000 + (p % 55_000) as u16
}

/// passed/total per (fam, via, proto, port) and the mismatches.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<Key, (u32, u32)>,
    /// Probes whose expected answer is "denied" (a timeout).
    expected_denied: u32,
    /// Steps with silent probes that had waited less than twice the step's slowest
    /// answer, and how many: they were probed again, patiently.
    slow_steps: u32,
    rechecked: u32,
    /// The slowest answer of any step.
    slowest: Duration,
    wrong: Vec<String>,
}

/// One probe of a step: who, what, expected and got.
struct Probe {
    from: (String, String),
    to: (String, String),
    key: Key,
    addr: SocketAddr,
    want: bool,
    got: Option<Duration>,
    /// How long it waited (for an answer that did not come: before giving up).
    waited: Duration,
}

fn policy_file(n: &str, name: &str) -> String {
    format!("np-{n}-{name}.json")
}

fn ns_file(n: &str) -> String {
    format!("ns-{n}.json")
}

fn pod_file(n: &str, p: &str) -> String {
    format!("pod-{n}-{p}.json")
}

/// What the maps hold per local pod, as the snapshot describes it: addresses, and per
/// direction isolation + rules (sorted). The names of the isolating policies are left
/// out: a change that only renames them programs nothing, so the daemon need not
/// rewrite the file for it.
type Programmed = BTreeMap<String, (Vec<IpAddr>, [(bool, Vec<String>); 2])>;

fn programmed(s: &PolicySnapshot) -> Programmed {
    let dir = |i: usize| {
        let d = s
            .direction(i)
            .cloned()
            .unwrap_or_else(DirectionSnapshot::default);
        let mut rules: Vec<String> = d.rules.iter().map(|r| format!("{r:?}")).collect();
        rules.sort();
        (d.isolated, rules)
    };
    s.pods
        .iter()
        .map(|p| {
            let mut ips = p.ips.clone();
            ips.sort();
            (p.pod.clone(), (ips, [dir(p.ingress), dir(p.egress)]))
        })
        .collect()
}

struct World<'a> {
    cluster: &'a Cluster,
    manifests: &'a ManifestDir,
    /// (ns, pod) -> topology pod name.
    names: BTreeMap<(String, String), String>,
    /// (ns, pod) -> its Service's ClusterIPs (IPv4, IPv6).
    vips: BTreeMap<(String, String), [IpAddr; 2]>,
    /// One model per node (node order), fed the same objects as the files: only to know
    /// when each daemon has programmed a change. Never used for the expected verdicts.
    models: Vec<PolicyModel>,
    /// Policy files written (ns, name).
    policies: BTreeSet<(String, String)>,
    /// Namespaces and pods whose labels a case changed.
    changed_nss: BTreeSet<String>,
    changed_pods: BTreeSet<(String, String)>,
}

impl World<'_> {
    fn pods(&self) -> Vec<(String, String)> {
        self.names.keys().cloned().collect()
    }

    fn write_json(&self, file: &str, object: &impl serde::Serialize) -> Result<()> {
        self.manifests
            .write(file, &serde_json::to_string_pretty(object)?)
    }

    fn put_namespace(&mut self, n: &str, extra: &[(&'static str, &'static str)]) -> Result<()> {
        let object = ns_object(n, extra)?;
        self.write_json(&ns_file(n), &object)?;
        for m in &mut self.models {
            m.apply_namespace(&object);
        }
        Ok(())
    }

    fn put_pod(&mut self, n: &str, p: &str, extra: &[(&'static str, &'static str)]) -> Result<()> {
        let object = self_pod(self.cluster, &self.names, n, p, extra)?;
        self.write_json(&pod_file(n, p), &object)?;
        for m in &mut self.models {
            m.apply_pod(&object);
        }
        Ok(())
    }

    fn apply_change(&mut self, change: &Change) -> Result<()> {
        match change {
            Change::Apply(n, name, spec) => {
                let object = policy(n, name, spec.clone())?;
                self.write_json(&policy_file(n, name), &object)?;
                self.policies.insert((n.to_string(), name.to_string()));
                for m in &mut self.models {
                    m.apply_policy(&object);
                }
            }
            Change::Delete(n, name) => {
                self.manifests.remove(&policy_file(n, name))?;
                self.policies.remove(&(n.to_string(), name.to_string()));
                for m in &mut self.models {
                    m.delete_policy(n, name);
                }
            }
            Change::NsLabels(n, extra) => {
                self.put_namespace(n, extra)?;
                self.changed_nss.insert(n.to_string());
            }
            Change::PodLabels(n, p, extra) => {
                self.put_pod(n, p, extra)?;
                self.changed_pods.insert((n.to_string(), p.to_string()));
            }
        }
        Ok(())
    }

    /// Back to no policy and the default labels (files only; [`Self::wait_programmed`]
    /// waits for the daemons).
    fn reset(&mut self) -> Result<()> {
        for (n, name) in std::mem::take(&mut self.policies) {
            self.manifests.remove(&policy_file(&n, &name))?;
            for m in &mut self.models {
                m.delete_policy(&n, &name);
            }
        }
        for n in std::mem::take(&mut self.changed_nss) {
            self.put_namespace(&n, &[])?;
        }
        for (n, p) in std::mem::take(&mut self.changed_pods) {
            self.put_pod(&n, &p, &[])?;
        }
        Ok(())
    }

    /// Waits until every daemon's policy snapshot holds what the model of its node
    /// compiles from the files written so far; returns how long that took.
    fn wait_programmed(&mut self) -> Result<Duration> {
        let started = Instant::now();
        for (node, model) in self.cluster.nodes.iter().zip(&mut self.models) {
            model.recompute();
            let want = programmed(&PolicySnapshot::of(model, 0));
            let path = snapshot_path(node.bpffs.path());
            loop {
                let have = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<PolicySnapshot>(&b).ok())
                    .map(|s| programmed(&s));
                if have.as_ref() == Some(&want) {
                    break;
                }
                if started.elapsed() > PROGRAM_BOUND {
                    bail!(
                        "node {}: the daemon's policy snapshot {} does not show the change after {PROGRAM_BOUND:?}; want {want:#?}, have {have:#?}",
                        node.name,
                        path.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(started.elapsed())
    }

    fn target(&self, to: &(String, String), (fam, via, _, port): Key) -> Result<SocketAddr> {
        Ok(match via {
            Via::Direct => SocketAddr::new(self.cluster.pod(&self.names[to])?.addr(fam.v6()), port),
            Via::ClusterIp => SocketAddr::new(self.vips[to][fam.index()], port),
        })
    }

    /// Runs `probes` at once, from inside each one's client namespace; fills `got`.
    /// `timeout`: the wait of probes expected to answer (and of all when `patient_denials`
    /// is off); see [`patience`] for the others. Returns the slowest answer.
    fn run_probes(
        &self,
        probes: &mut [Probe],
        timeout: Duration,
        patient_denials: bool,
    ) -> Result<Duration> {
        let slowest = Slowest::new(0);
        let slowest = &slowest;
        let mut by_client: BTreeMap<(String, String), Vec<&mut Probe>> = BTreeMap::new();
        for p in probes.iter_mut() {
            by_client.entry(p.from.clone()).or_default().push(p);
        }
        std::thread::scope(|scope| -> Result<()> {
            let mut handles = Vec::new();
            for (from, mine) in by_client {
                let client = self.cluster.pod(&self.names[&from])?;
                handles.push(scope.spawn(move || {
                    run_in(&client.ns, || {
                        // The runtime's only thread is this one, inside the namespace.
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .context("a probe runtime")?;
                        rt.block_on(futures::future::join_all(mine.into_iter().map(
                            |p| async move {
                                let want = p.want || !patient_denials;
                                (p.got, p.waited) =
                                    probe(p.addr, p.key.2, want, timeout, slowest).await;
                            },
                        )));
                        Ok(())
                    })
                }));
            }
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
            }
            Ok(())
        })?;
        Ok(Duration::from_micros(slowest.load(Ordering::Relaxed)))
    }

    /// Probes every pair both ways, every (fam, via, proto, port); counts into `tally`.
    fn probe_all(
        &self,
        case: &str,
        step_no: usize,
        step: &StepCase,
        tally: &mut Tally,
    ) -> Result<()> {
        let pods = self.pods();
        let mut probes = Vec::new();
        for from in &pods {
            for to in &pods {
                for fam in FAMS {
                    for via in [Via::ClusterIp, Via::Direct] {
                        for proto in [Proto::Tcp, Proto::Udp] {
                            for port in PORTS {
                                let key = (fam, via, proto, port);
                                probes.push(Probe {
                                    from: from.clone(),
                                    to: to.clone(),
                                    key,
                                    addr: self.target(to, key)?,
                                    want: expected(
                                        step,
                                        (&from.0, &from.1),
                                        (&to.0, &to.1),
                                        (fam, proto, port),
                                    ),
                                    got: None,
                                    waited: Duration::ZERO,
                                });
                            }
                        }
                    }
                }
            }
        }
        let mut slowest = self.run_probes(&mut probes, PROBE_TIMEOUT, true)?;
        // A miss where an answer is expected: once more, slower.
        let mut again: Vec<Probe> = Vec::new();
        let mut rest: Vec<Probe> = Vec::new();
        for p in probes {
            if p.want && p.got.is_none() {
                again.push(p);
            } else {
                rest.push(p);
            }
        }
        slowest = slowest.max(self.run_probes(&mut again, RETRY_TIMEOUT, false)?);
        rest.extend(again);
        // A denial counts only if the probe waited twice the slowest answer of the step
        // (one may have come after it gave up): the others are probed again, patiently.
        let (mut recheck, keep): (Vec<Probe>, Vec<Probe>) = rest
            .into_iter()
            .partition(|p| p.got.is_none() && p.waited < slowest * 2);
        if !recheck.is_empty() {
            tally.slow_steps += 1;
            tally.rechecked += recheck.len() as u32;
            self.run_probes(&mut recheck, PROBE_TIMEOUT.max(slowest * 2), false)?;
        }
        let mut rest = keep;
        rest.extend(recheck);
        tally.slowest = tally.slowest.max(slowest);
        for p in rest {
            let c = tally.counts.entry(p.key).or_default();
            c.1 += 1;
            tally.expected_denied += u32::from(!p.want);
            let got = p.got.is_some();
            if p.want == got {
                c.0 += 1;
            } else {
                let (fam, via, proto, port) = p.key;
                tally.wrong.push(format!(
                    "{case} step {step_no}: {}/{} -> {}/{} {fam:?} {via:?} {proto:?}/{port} ({}): expected {}, got {}",
                    p.from.0, p.from.1, p.to.0, p.to.1, p.addr,
                    if p.want { "allowed" } else { "denied" },
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

/// The Service of pod `n/p` (`svc-<p>` in `n`, ports 80/81 on TCP/UDP, both families) and
/// its two EndpointSlices; returns the (frontend key, backends) the maps must show.
fn write_service(
    cluster: &Cluster,
    manifests: &ManifestDir,
    (n, p): (&str, &str),
    backend: &str,
    vips: [IpAddr; 2],
) -> Result<Vec<(String, Vec<String>)>> {
    let tp = cluster.pod(backend)?;
    let ports: Vec<PortSpec> = CONTAINER_PORTS
        .iter()
        .map(|(_, port, proto)| {
            PortSpec::new(
                &format!("{}-{port}", proto.to_ascii_lowercase()),
                *port,
                proto_static(proto),
            )
        })
        .collect();
    let service = ServiceManifest {
        namespace: n.into(),
        name: format!("svc-{p}"),
        cluster_ips: vips.to_vec(),
        ports: ports.iter().map(|s| (s.clone(), s.port)).collect(),
    };
    manifests.write(&format!("svc-{n}-{p}.yaml"), &service.yaml())?;
    let slices: Vec<String> = FAMS
        .iter()
        .map(|fam| {
            SliceManifest {
                namespace: n.into(),
                name: format!("svc-{p}-{}", if fam.v6() { "v6" } else { "v4" }),
                service: format!("svc-{p}"),
                ipv6: fam.v6(),
                ports: ports.clone(),
                endpoints: vec![EndpointSpec {
                    addr: tp.addr(fam.v6()),
                    node: format!("n{}", tp.node),
                    ready: true,
                    terminating: false,
                }],
                trigger_time: None,
            }
            .yaml()
        })
        .collect();
    manifests.write(&format!("slices-{n}-{p}.yaml"), &slices.join("---\n"))?;
    let mut wanted = Vec::new();
    for fam in FAMS {
        for s in &ports {
            wanted.push((
                frontend_key(SocketAddr::new(vips[fam.index()], s.port), s.protocol),
                vec![SocketAddr::new(tp.addr(fam.v6()), s.port).to_string()],
            ));
        }
    }
    Ok(wanted)
}

fn proto_static(proto: &str) -> &'static str {
    if proto == "UDP" {
        "UDP"
    } else {
        "TCP"
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// New TCP connections per [`POLL_EVERY`] to `addr` from inside `ns` (each with a
/// [`POLL_CONNECT_TIMEOUT`]), until [`POLL_STABLE`] consecutive ones (in send order) show
/// `want` (connected or not); returns when the first of those was sent, after `t0`.
fn first_new_verdict(ns: &NetNs, addr: SocketAddr, want: bool, t0: Instant) -> Result<Duration> {
    run_in(ns, || {
        let (tx, rx) = mpsc::channel::<(usize, Duration, bool)>();
        std::thread::scope(|scope| {
            let mut results: BTreeMap<usize, (Duration, bool)> = BTreeMap::new();
            let mut sent = 0usize;
            loop {
                if t0.elapsed() > POLL_BOUND {
                    bail!(
                        "{addr}: no stable {} within {POLL_BOUND:?} of the change",
                        if want { "answer" } else { "denial" }
                    );
                }
                let tx = tx.clone();
                let (k, at) = (sent, t0.elapsed());
                scope.spawn(move || {
                    let ok = TcpStream::connect_timeout(&addr, POLL_CONNECT_TIMEOUT).is_ok();
                    let _ = tx.send((k, at, ok));
                });
                sent += 1;
                std::thread::sleep(POLL_EVERY);
                while let Ok((k, at, ok)) = rx.try_recv() {
                    results.insert(k, (at, ok));
                }
                // The completed prefix in send order; the run of `want` at its end.
                let done: Vec<(Duration, bool)> = results
                    .iter()
                    .enumerate()
                    .take_while(|(i, (k, _))| i == *k)
                    .map(|(_, (_, v))| *v)
                    .collect();
                let run = done.iter().rev().take_while(|(_, ok)| *ok == want).count();
                if run >= POLL_STABLE {
                    return Ok(done[done.len() - run].0);
                }
            }
        })
    })
}

const POLL_EVERY: Duration = Duration::from_millis(10);
const POLL_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const POLL_STABLE: usize = 5;
const POLL_BOUND: Duration = Duration::from_secs(10);
const LATENCY_ROUNDS: usize = 20;

/// Policy change -> enforcement for new TCP connections x/a -> z/b (other node) through
/// z/b's ClusterIP, alternating the family per round: `np-z-lat` is rewritten from
/// "from x/a" (allowed) to "from z/c" (x/a denied) and back. The established stream
/// opened before the first change must keep working throughout.
fn policy_change_latency(world: &mut World) -> Result<()> {
    let allow = json!({"podSelector": {"matchLabels": {"pod": "b"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}},
                               "podSelector": {"matchLabels": {"pod": "a"}}}]}]});
    let deny = json!({"podSelector": {"matchLabels": {"pod": "b"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]});
    world.apply_change(&apply("z", "lat", allow.clone()))?;
    world.wait_programmed()?;
    let cluster = world.cluster;
    let client = cluster.pod(&world.names[&("x".into(), "a".into())])?;
    let vips = world.vips[&("z".to_owned(), "b".to_owned())];
    let addr = |fam: Fam| SocketAddr::new(vips[fam.index()], 80);
    // Established before any deny: one stream per family.
    let mut held = Vec::new();
    for fam in FAMS {
        held.push(run_in(&client.ns, || HeldConnection::open(addr(fam)))?);
    }
    let mut to_deny = Vec::new();
    let mut to_allow = Vec::new();
    let mut held_pings = 0;
    for round in 0..LATENCY_ROUNDS {
        let fam = FAMS[round % 2];
        let t0 = Instant::now();
        world.apply_change(&apply("z", "lat", deny.clone()))?;
        to_deny.push(first_new_verdict(&client.ns, addr(fam), false, t0)?);
        // New connections are denied now; the established streams still answer.
        for h in &mut held {
            h.ping()
                .context("an established stream after its policy started denying it")?;
            held_pings += 1;
        }
        let t0 = Instant::now();
        world.apply_change(&apply("z", "lat", allow.clone()))?;
        to_allow.push(first_new_verdict(&client.ns, addr(fam), true, t0)?);
    }
    world.reset()?;
    world.wait_programmed()?;
    to_deny.sort();
    to_allow.sort();
    for (what, v) in [("allow -> deny", &to_deny), ("deny -> allow", &to_allow)] {
        eprintln!(
            "policy change -> enforcement for new connections, {what}, {} rounds (v4 and v6 alternating): p50 {:?}, p99 {:?}, max {:?}",
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            v.last().copied().unwrap_or_default()
        );
    }
    eprintln!(
        "established TCP streams (one per family, opened while allowed): {held_pings} pings answered while new connections were denied"
    );
    Ok(())
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
    let manifests = ManifestDir::create(cluster.prefix())?;
    // Servers: every pod on 80 and 81, TCP and UDP, both families.
    let mut names = BTreeMap::new();
    let mut servers = Vec::new();
    for n in NSS {
        for p in PODS {
            let name = format!("{n}{p}");
            let tp = cluster.pod(&name)?;
            let socks: Vec<SocketAddr> = PORTS
                .iter()
                .flat_map(|&port| FAMS.map(|fam| SocketAddr::new(tp.addr(fam.v6()), port)))
                .collect();
            servers.push(Servers::start(&tp.ns, &name, &socks, &socks)?);
            names.insert((n.to_owned(), p.to_owned()), name);
        }
    }
    // The objects, as files: namespaces, pods, and a dual-stack Service per pod.
    let mut vips = BTreeMap::new();
    let mut frontends = Vec::new();
    for (i, ((n, p), name)) in names.iter().enumerate() {
        let pod_vips: [IpAddr; 2] = [
            format!("198.19.0.{}", 10 + i).parse()?,
            format!("fd00:19::{:x}", 10 + i).parse()?,
        ];
        frontends.extend(write_service(&cluster, &manifests, (n, p), name, pod_vips)?);
        vips.insert((n.clone(), p.clone()), pod_vips);
    }
    let mut world = World {
        cluster: &cluster,
        manifests: &manifests,
        names,
        vips,
        models: cluster
            .nodes
            .iter()
            .map(|node| PolicyModel::new(&node.name))
            .collect(),
        policies: BTreeSet::new(),
        changed_nss: BTreeSet::new(),
        changed_pods: BTreeSet::new(),
    };
    for n in NSS {
        world.put_namespace(n, &[])?;
    }
    for (n, p) in world.pods() {
        world.put_pod(&n, &p, &[])?;
    }
    let daemons = start_per_node(&cluster, &manifests, &[], Duration::from_secs(60))?;
    for node in &cluster.nodes {
        let took = wait_frontends(node.bpffs.path(), &frontends, PROGRAM_BOUND)?;
        eprintln!(
            "node {}: every Service in the maps after {took:?}",
            node.name
        );
    }
    let took = world.wait_programmed()?;
    eprintln!("every node's policy state programmed after another {took:?}");
    let addrs = Addrs {
        by_pod: world
            .names
            .iter()
            .map(|(k, name)| {
                let tp = cluster.pod(name)?;
                Ok((k.clone(), [tp.addr(false), tp.addr(true)]))
            })
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
    let mut program_times = Vec::new();
    for case in &cases {
        world.reset()?;
        for (k, step) in case.steps.iter().enumerate() {
            for change in &step.changes {
                world.apply_change(change)?;
            }
            let programmed = world.wait_programmed()?;
            program_times.push(programmed);
            let t0 = Instant::now();
            world.probe_all(case.name, k, step, &mut tally)?;
            steps += 1;
            eprintln!(
                "{} step {k}: programmed in {programmed:?}, probed in {:?}",
                case.name,
                t0.elapsed()
            );
        }
    }
    let cases_took = started.elapsed();
    world.reset()?;
    world.wait_programmed()?;
    let latency_started = Instant::now();
    policy_change_latency(&mut world)?;
    let latency_took = latency_started.elapsed();
    drop(world);
    drop(daemons);
    drop(servers);
    drop(manifests);
    drop(cluster);

    program_times.sort();
    eprintln!(
        "warm-up (no policy): {} wrong of {}",
        warm.wrong.len(),
        warm.counts.values().map(|c| c.1).sum::<u32>()
    );
    eprintln!(
        "{} cases, {steps} steps, {} probes expected denied, {} steps re-checked {} silent probes more patiently, slowest answer {:?}; set-up and cases {cases_took:?}, latency phase {latency_took:?}, total {:?}",
        cases.len(),
        tally.expected_denied,
        tally.slow_steps,
        tally.rechecked,
        tally.slowest,
        started.elapsed()
    );
    eprintln!(
        "files written -> both daemons' policy programmed (wait of a step): p50 {:?}, p99 {:?}",
        percentile(&program_times, 0.5),
        percentile(&program_times, 0.99)
    );
    for ((fam, via, proto, port), (ok, total)) in &tally.counts {
        eprintln!("{fam:?} {via:?} {proto:?}/{port}: {ok}/{total} as expected");
    }
    let mut by: BTreeMap<(Fam, Via, Proto), (u32, u32)> = BTreeMap::new();
    for ((fam, via, proto, _), (ok, total)) in &tally.counts {
        let e = by.entry((*fam, *via, *proto)).or_default();
        e.0 += ok;
        e.1 += total;
    }
    for ((fam, via, proto), (ok, total)) in &by {
        eprintln!("SUMMARY {fam:?} {via:?} {proto:?}: {ok}/{total}");
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
