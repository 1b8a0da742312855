//! Property tests: random namespaces, pods, labels and policies (selectors with every
//! operator, ipBlocks with excepts, named ports, endPort, policyTypes, both directions,
//! dual-stack, finished/pending/host-network pods). For every (source, destination,
//! protocol, port) among the pods' addresses and a few external ones, the compiled
//! tables of both nodes, looked up as the kernel will, agree with the reference evaluator;
//! and after random updates the incremental compile equals a fresh one and reports exactly
//! the local pods whose view changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1::{Container, ContainerPort, Namespace, Pod, PodIP, PodSpec, PodStatus},
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
            NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use proptest::{prelude::*, sample::select};

use super::{lookup::LookupTables, reference, PolicyModel, Proto};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const NODES: [&str; 2] = ["n1", "n2"];
const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];
const PROBE_PORTS: [u16; 6] = [53, 80, 81, 82, 8080, 9000];
const EXTERNAL: [&str; 4] = ["198.19.200.5", "fd00:c8::5", "198.19.255.1", "fd00:ff::1"];

type LabelMap = BTreeMap<String, String>;

fn label_map(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = LabelMap> {
    prop::collection::btree_map(select(keys), select(values), 0..=keys.len()).prop_map(|m| {
        m.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = LabelSelector> {
    let expr = (
        select(keys),
        select(&["In", "NotIn", "Exists", "DoesNotExist"][..]),
        prop::collection::vec(select(values), 1..3),
    )
        .prop_map(|(k, op, vs)| LabelSelectorRequirement {
            key: k.to_string(),
            operator: op.to_string(),
            values: matches!(op, "In" | "NotIn")
                .then(|| vs.iter().map(|v| v.to_string()).collect()),
        });
    (
        prop::option::of(label_map(keys, values)),
        prop::option::of(prop::collection::vec(expr, 0..3)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

const POD_KEYS: &[&str] = &["app", "tier"];
const POD_VALUES: &[&str] = &["a", "b", "c"];
const NS_KEYS: &[&str] = &["env", "team"];
const NS_VALUES: &[&str] = &["a", "b"];

/// A pod before its addresses are assigned.
#[derive(Clone, Debug)]
struct PodSketch {
    ns: usize,
    labels: LabelMap,
    node: usize,
    v6: bool,
    /// 0..=7 running, 8 succeeded, 9 pending (no IP), 10 host network.
    state: u8,
    ports: Vec<(usize, u16, &'static str)>,
}

fn pod_sketch() -> impl Strategy<Value = PodSketch> {
    (
        0..3usize,
        label_map(POD_KEYS, POD_VALUES),
        0..2usize,
        any::<bool>(),
        0..=10u8,
        prop::collection::vec(
            (
                0..PORT_NAMES.len(),
                select(&[53u16, 80, 81, 8080][..]),
                select(&["TCP", "UDP"][..]),
            ),
            0..3,
        ),
    )
        .prop_map(|(ns, labels, node, v6, state, ports)| PodSketch {
            ns,
            labels,
            node,
            v6,
            state,
            ports,
        })
}

fn pod(i: usize, s: &PodSketch) -> Pod {
    let v4 = format!("198.18.{}.{}", s.node, i + 1);
    let v6 = format!("fd00:18:0:{}::{:x}", s.node, i + 1);
    let mut ips = vec![PodIP { ip: v4.clone() }];
    if s.v6 {
        ips.push(PodIP { ip: v6 });
    }
    let mut seen = BTreeSet::new();
    let ports: Vec<ContainerPort> = s
        .ports
        .iter()
        .filter(|(n, _, _)| seen.insert(*n))
        .map(|&(n, port, proto)| ContainerPort {
            name: Some(PORT_NAMES[n].into()),
            container_port: i32::from(port),
            protocol: Some(proto.into()),
            ..ContainerPort::default()
        })
        .collect();
    let (phase, with_ips) = match s.state {
        8 => ("Succeeded", true),
        9 => ("Pending", false),
        _ => ("Running", true),
    };
    Pod {
        metadata: ObjectMeta {
            namespace: Some(NAMESPACES[s.ns].into()),
            name: Some(format!("p{i}")),
            labels: Some(s.labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODES[s.node].into()),
            host_network: (s.state == 10).then_some(true),
            containers: vec![Container {
                name: "c".into(),
                ports: Some(ports),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: with_ips.then_some(v4),
            pod_ips: with_ips.then_some(ips),
            ..PodStatus::default()
        }),
    }
}

/// (cidr, possible excepts) pools in the test ranges (and the whole address space).
const BLOCKS: &[(&str, &[&str])] = &[
    (
        "198.18.0.0/15",
        &["198.18.1.0/24", "198.18.0.1/32", "198.18.0.0/16"],
    ),
    ("198.18.1.0/24", &["198.18.1.2/32", "198.18.1.0/30"]),
    ("198.18.0.0/16", &["198.18.0.3/32"]),
    ("0.0.0.0/0", &["198.18.0.0/16", "198.19.200.0/24"]),
    ("198.19.200.0/24", &[]),
    ("198.18.0.3/32", &[]),
    ("fd00:18::/32", &["fd00:18:0:1::/64", "fd00:18::1/128"]),
    ("::/0", &["fd00:18:0:1::/64"]),
];

fn peer() -> impl Strategy<Value = NetworkPolicyPeer> {
    let pods = || selector(POD_KEYS, POD_VALUES);
    let nss = || selector(NS_KEYS, NS_VALUES);
    prop_oneof![
        pods().prop_map(|p| NetworkPolicyPeer {
            pod_selector: Some(p),
            ..NetworkPolicyPeer::default()
        }),
        nss().prop_map(|n| NetworkPolicyPeer {
            namespace_selector: Some(n),
            ..NetworkPolicyPeer::default()
        }),
        (pods(), nss()).prop_map(|(p, n)| NetworkPolicyPeer {
            pod_selector: Some(p),
            namespace_selector: Some(n),
            ..NetworkPolicyPeer::default()
        }),
        (0..BLOCKS.len(), prop::collection::vec(0..3usize, 0..3)).prop_map(|(b, ex)| {
            let (cidr, pool) = BLOCKS[b];
            let except: BTreeSet<String> = ex
                .iter()
                .filter_map(|&e| pool.get(e))
                .map(|e| e.to_string())
                .collect();
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.into(),
                    except: (!except.is_empty()).then(|| except.into_iter().collect()),
                }),
                ..NetworkPolicyPeer::default()
            }
        }),
    ]
}

fn port() -> impl Strategy<Value = NetworkPolicyPort> {
    let protocol = prop::option::of(select(&["TCP", "UDP", "SCTP"][..]));
    let number = select(&[53, 80, 81, 8080][..]);
    let value = prop_oneof![
        Just((None, None)),
        number.prop_map(|n| (Some(IntOrString::Int(n)), None)),
        (select(&[53, 80, 81][..]), select(&[81, 82, 8080][..]))
            .prop_map(|(lo, hi)| (Some(IntOrString::Int(lo)), Some(hi))),
        select(&["http", "dns", "metrics", "nope"][..])
            .prop_map(|n| (Some(IntOrString::String(n.into())), None)),
    ];
    (protocol, value).prop_map(|(protocol, (port, end_port))| NetworkPolicyPort {
        protocol: protocol.map(String::from),
        port,
        end_port,
    })
}

type RuleParts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule() -> impl Strategy<Value = RuleParts> {
    (
        prop::option::of(prop::collection::vec(peer(), 0..3)),
        prop::option::of(prop::collection::vec(port(), 0..3)),
    )
}

fn policy(i: usize) -> impl Strategy<Value = NetworkPolicy> {
    let types = prop_oneof![
        Just(None),
        Just(Some(vec!["Ingress"])),
        Just(Some(vec!["Egress"])),
        Just(Some(vec!["Ingress", "Egress"])),
    ];
    (
        0..3usize,
        prop::option::of(selector(POD_KEYS, POD_VALUES)),
        types,
        prop::option::of(prop::collection::vec(rule(), 0..3)),
        prop::option::of(prop::collection::vec(rule(), 0..3)),
    )
        .prop_map(
            move |(ns, pod_selector, types, ingress, egress)| NetworkPolicy {
                metadata: ObjectMeta {
                    namespace: Some(NAMESPACES[ns].into()),
                    name: Some(format!("np{i}")),
                    ..ObjectMeta::default()
                },
                spec: Some(NetworkPolicySpec {
                    pod_selector,
                    policy_types: types.map(|t| t.into_iter().map(String::from).collect()),
                    ingress: ingress.map(|rs| {
                        rs.into_iter()
                            .map(|(from, ports)| NetworkPolicyIngressRule { from, ports })
                            .collect()
                    }),
                    egress: egress.map(|rs| {
                        rs.into_iter()
                            .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                            .collect()
                    }),
                }),
            },
        )
}

fn namespace(i: usize, labels: LabelMap) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACES[i].into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

#[derive(Clone, Debug)]
struct World {
    /// `None`: the Namespace object is not (yet) known.
    namespaces: Vec<Option<LabelMap>>,
    pods: Vec<PodSketch>,
    policies: Vec<NetworkPolicy>,
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(
            prop::option::weighted(0.9, label_map(NS_KEYS, NS_VALUES)),
            3,
        ),
        prop::collection::vec(pod_sketch(), 1..9),
        0..5usize,
    )
        .prop_flat_map(|(namespaces, pods, n)| {
            let policies: Vec<_> = (0..n).map(policy).collect();
            (Just(namespaces), Just(pods), policies)
        })
        .prop_map(|(namespaces, pods, policies)| World {
            namespaces,
            pods,
            policies,
        })
}

/// One change applied after the initial state.
#[derive(Clone, Debug)]
enum Change {
    PodLabels(usize, LabelMap),
    PodFinished(usize),
    NamespaceLabels(usize, LabelMap),
    DeletePolicy(usize),
    DeletePod(usize),
    ReplacePolicy(Box<NetworkPolicy>),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..9usize, label_map(POD_KEYS, POD_VALUES)).prop_map(|(i, l)| Change::PodLabels(i, l)),
        (0..9usize).prop_map(Change::PodFinished),
        (0..3usize, label_map(NS_KEYS, NS_VALUES)).prop_map(|(i, l)| Change::NamespaceLabels(i, l)),
        (0..5usize).prop_map(Change::DeletePolicy),
        (0..9usize).prop_map(Change::DeletePod),
        (0..5usize).prop_flat_map(|i| policy(i).prop_map(|p| Change::ReplacePolicy(Box::new(p)))),
    ]
}

fn models(world: &World) -> Vec<PolicyModel> {
    let mut models: Vec<PolicyModel> = NODES.iter().map(|n| PolicyModel::new(*n)).collect();
    for m in &mut models {
        // Policies first, then pods, then namespaces: the order must not matter.
        for p in &world.policies {
            m.apply_policy(p);
            m.recompute();
        }
        for (i, s) in world.pods.iter().enumerate() {
            m.apply_pod(&pod(i, s));
        }
        m.recompute();
        for (i, labels) in world.namespaces.iter().enumerate() {
            if let Some(labels) = labels {
                m.apply_namespace(&namespace(i, labels.clone()));
                m.recompute();
            }
        }
    }
    models
}

/// Every address the probes use: the pods' (whatever their state) and external ones.
fn addresses(world: &World) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = EXTERNAL.iter().filter_map(|s| s.parse().ok()).collect();
    for (i, s) in world.pods.iter().enumerate() {
        let v4 = format!("198.18.{}.{}", s.node, i + 1);
        let v6 = format!("fd00:18:0:{}::{:x}", s.node, i + 1);
        out.extend([v4, v6].iter().filter_map(|a| a.parse::<IpAddr>().ok()));
    }
    out.sort();
    out.dedup();
    out
}

fn check_verdicts(models: &[PolicyModel], world: &World) -> Result<(), TestCaseError> {
    let tables = LookupTables::build(models.iter().flat_map(|m| m.compiled().values()));
    let addrs = addresses(world);
    for &src in &addrs {
        for &dst in &addrs {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            for proto in Proto::ALL {
                for port in PROBE_PORTS {
                    let kernel = tables.allowed(src, dst, proto, port);
                    let want = reference::allowed(&models[0], src, dst, proto, port);
                    prop_assert_eq!(
                        kernel,
                        want,
                        "{} -> {} {:?}/{}: compiled {}, reference {}",
                        src,
                        dst,
                        proto,
                        port,
                        kernel,
                        want
                    );
                }
            }
        }
    }
    Ok(())
}

fn check_incremental(m: &PolicyModel) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        m.compiled(),
        &m.compile_all(),
        "incremental != full compile"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn compiled_tables_agree_with_the_reference(world in world()) {
        let models = models(&world);
        for m in &models {
            check_incremental(m)?;
        }
        check_verdicts(&models, &world)?;
    }

    #[test]
    fn incremental_updates_match_a_full_compile(
        world in world(),
        changes in prop::collection::vec(change(), 1..6),
    ) {
        let mut models = models(&world);
        let mut world = world;
        for change in &changes {
            for m in &mut models {
                match change {
                    Change::PodLabels(i, labels) => {
                        if let Some(s) = world.pods.get(*i) {
                            let s = PodSketch { labels: labels.clone(), ..s.clone() };
                            m.apply_pod(&pod(*i, &s));
                        }
                    }
                    Change::PodFinished(i) => {
                        if let Some(s) = world.pods.get(*i) {
                            m.apply_pod(&pod(*i, &PodSketch { state: 8, ..s.clone() }));
                        }
                    }
                    Change::NamespaceLabels(i, labels) => {
                        m.apply_namespace(&namespace(*i, labels.clone()));
                    }
                    Change::DeletePolicy(i) => {
                        for ns in NAMESPACES {
                            m.delete_policy(ns, &format!("np{i}"));
                        }
                    }
                    Change::DeletePod(i) => {
                        if let Some(s) = world.pods.get(*i) {
                            m.delete_pod(NAMESPACES[s.ns], &format!("p{i}"));
                        }
                    }
                    Change::ReplacePolicy(p) => m.apply_policy(p),
                }
                let before = m.compiled().clone();
                let changes = m.recompute();
                let after = m.compiled();
                let differ: BTreeSet<_> = before
                    .keys()
                    .chain(after.keys())
                    .filter(|k| before.get(*k) != after.get(*k))
                    .cloned()
                    .collect();
                let reported: BTreeSet<_> =
                    changes.updated.iter().chain(&changes.removed).cloned().collect();
                prop_assert_eq!(&reported, &differ, "reported changes != actual ones");
                check_incremental(m)?;
            }
            // Keep the sketch in step, so the probes use the right addresses.
            match change {
                Change::PodLabels(i, labels) => {
                    if let Some(s) = world.pods.get_mut(*i) {
                        s.labels = labels.clone();
                    }
                }
                Change::PodFinished(i) => {
                    if let Some(s) = world.pods.get_mut(*i) {
                        s.state = 8;
                    }
                }
                _ => {}
            }
        }
        check_verdicts(&models, &world)?;
    }
}
