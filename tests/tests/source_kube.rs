//! The Kubernetes API source (`service_lb::source::kube_api::run`, the real client through a
//! kubeconfig) against the fake API server: initial lists, changes, selectors, pagination,
//! 410 Gone relists and dropped connections. No root needed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use k8s_openapi::{
    api::{
        core::v1::{
            Container, ContainerPort, EnvVar, Namespace, Node, Pod, PodIP, PodSpec, PodStatus,
            Service, ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointSlice},
        networking::v1::NetworkPolicy,
        networking::v1::{ServiceCIDR, ServiceCIDRSpec},
    },
    apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta},
};
use service_lb::source::{
    kube_api::{self, KubeSourceConfig},
    LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
};
use service_lb_tests::fake_apiserver::{
    recorder::{Recorder, Seen},
    FakeApiServer,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

const NODE: &str = "n1";
const KINDS: [&str; 4] = ["Service", "EndpointSlice", "Node", "ServiceCIDR"];
/// With `--network-policy on`.
const POLICY_KINDS: [&str; 7] = [
    "Service",
    "EndpointSlice",
    "Node",
    "ServiceCIDR",
    "Pod",
    "Namespace",
    "NetworkPolicy",
];
/// Hang guard for the server side (watches reconnecting), not a timing check.
const SERVER_WAIT: Duration = Duration::from_secs(30);

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, cluster_ip: &str) -> Service {
    labelled_service(name, cluster_ip, &[])
}

fn labelled_service(name: &str, cluster_ip: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(Some("default"), name, labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: Some(vec![cluster_ip.into()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(name: &str, service: &str, extra_labels: &[(&str, &str)]) -> EndpointSlice {
    let mut labels = vec![(LABEL_SERVICE_NAME, service)];
    labels.extend_from_slice(extra_labels);
    EndpointSlice {
        metadata: meta(Some("default"), name, &labels),
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["198.18.1.10".into()],
            ..Endpoint::default()
        }],
        ports: None,
    }
}

fn node(name: &str) -> Node {
    Node {
        metadata: meta(None, name, &[]),
        ..Node::default()
    }
}

fn service_cidr(name: &str, cidrs: &[&str]) -> ServiceCIDR {
    ServiceCIDR {
        metadata: meta(None, name, &[]),
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(cidrs.iter().map(|c| (*c).to_owned()).collect()),
        }),
        status: None,
    }
}

/// A temporary folder for the kubeconfig, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("slb-source-kube-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fake server, the real source task and what it sent.
struct Harness {
    kinds: &'static [&'static str],
    server: FakeApiServer,
    events: Recorder,
    cancel: CancellationToken,
    source: Option<JoinHandle<Result<()>>>,
    _dir: TempDir,
}

impl Harness {
    /// A server with `seed` applied, then the source started against it.
    async fn start(test: &str, seed: impl FnOnce(&FakeApiServer) -> Result<()>) -> Result<Self> {
        Self::start_with(test, false, seed).await
    }

    /// `network_policy`: also Pods, Namespaces and NetworkPolicies.
    async fn start_with(
        test: &str,
        network_policy: bool,
        seed: impl FnOnce(&FakeApiServer) -> Result<()>,
    ) -> Result<Self> {
        let server = FakeApiServer::start().await?;
        seed(&server)?;
        let dir = TempDir::new(test)?;
        let kubeconfig = server.write_kubeconfig(dir.path())?;
        let (tx, rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let config = KubeSourceConfig {
            kubeconfig: Some(kubeconfig),
            node_name: Some(NODE.into()),
            network_policy,
        };
        let source = tokio::spawn(kube_api::run(config, tx, cancel.clone()));
        Ok(Self {
            kinds: if network_policy {
                &POLICY_KINDS
            } else {
                &KINDS
            },
            server,
            events: Recorder::new(rx),
            cancel,
            source: Some(source),
            _dir: dir,
        })
    }

    /// Waits for the first list of every kind and for the three watches to be open.
    async fn synced(&mut self) -> Result<Vec<Seen>> {
        let seen = self.events.until_listed(self.kinds, 1).await?;
        self.watching().await?;
        Ok(seen)
    }

    async fn watching(&self) -> Result<()> {
        ensure!(
            self.server
                .wait_for_open_watches(self.kinds.len(), SERVER_WAIT)
                .await,
            "the source did not open its {} watches (open: {})",
            self.kinds.len(),
            self.server.open_watches()
        );
        Ok(())
    }

    /// Stops the source; it must end cleanly.
    async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        let source = self.source.take().context("source already stopped")?;
        tokio::time::timeout(SERVER_WAIT, source)
            .await
            .context("the source did not stop after cancel")?
            .context("the source task panicked")?
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn of_kind<'a>(seen: &'a [Seen], kind: &str) -> Vec<&'a Seen> {
    seen.iter().filter(|s| s.kind() == kind).collect()
}

fn strings(seen: &[&Seen]) -> Vec<String> {
    seen.iter().map(ToString::to_string).collect()
}

fn seed_two_services(server: &FakeApiServer) -> Result<()> {
    server.apply(&service("a", "198.19.0.1"))?;
    server.apply(&service("b", "198.19.0.2"))?;
    server.apply(&node(NODE))?;
    Ok(())
}

#[tokio::test]
async fn initial_lists_arrive_per_kind_with_selectors_and_pages() -> Result<()> {
    let mut h = Harness::start("initial", |server| {
        server.apply(&service("a", "198.19.0.1"))?;
        server.apply(&service("b", "198.19.0.2"))?;
        server.apply(&service("c", "198.19.0.3"))?;
        server.apply(&labelled_service(
            "other",
            "198.19.0.4",
            &[(LABEL_SERVICE_PROXY_NAME, "x")],
        ))?;
        server.apply(&slice("a-1", "a", &[]))?;
        server.apply(&slice(
            "other-1",
            "other",
            &[(LABEL_SERVICE_PROXY_NAME, "x")],
        ))?;
        server.apply(&node(NODE))?;
        server.apply(&node("n2"))?;
        // Pages of one object: the client must follow `continue`.
        server.set_max_page_size(Some(1));
        Ok(())
    })
    .await?;
    let seen = h.synced().await?;

    assert_eq!(
        strings(&of_kind(&seen, "Service")),
        [
            "Service Init",
            "Service InitApply default/a",
            "Service InitApply default/b",
            "Service InitApply default/c",
            "Service InitDone"
        ]
    );
    assert_eq!(
        strings(&of_kind(&seen, "EndpointSlice")),
        [
            "EndpointSlice Init",
            "EndpointSlice InitApply default/a-1",
            "EndpointSlice InitDone"
        ]
    );
    assert_eq!(
        strings(&of_kind(&seen, "Node")),
        ["Node Init", "Node InitApply n1", "Node InitDone"]
    );
    let a = h
        .events
        .object("Service", "default/a")
        .context("Service a")?;
    assert_eq!(a["spec"]["clusterIP"], "198.19.0.1");

    // The request shapes kube's watcher sent.
    let requests = h.server.requests();
    let lists = |suffix: &str| {
        requests
            .iter()
            .filter(|r| r.path.ends_with(suffix) && r.query.get("watch").is_none())
            .collect::<Vec<_>>()
    };
    let not_other = format!("!{LABEL_SERVICE_PROXY_NAME}");
    for suffix in ["/services", "/endpointslices"] {
        let pages = lists(suffix);
        assert!(!pages.is_empty(), "no list of {suffix}");
        for page in &pages {
            assert_eq!(
                page.query.get("labelSelector"),
                Some(not_other.as_str()),
                "{page:?}"
            );
        }
    }
    assert_eq!(
        lists("/services")
            .iter()
            .filter(|r| r.query.get("continue").is_some())
            .count(),
        2,
        "three services in pages of one: two follow-up pages"
    );
    for page in lists("/nodes") {
        assert_eq!(
            page.query.get("fieldSelector"),
            Some("metadata.name=n1"),
            "{page:?}"
        );
    }
    let watches: Vec<_> = requests.iter().filter(|r| r.query.flag("watch")).collect();
    assert!(watches.len() >= 3, "{watches:?}");
    for watch in &watches {
        assert!(
            watch
                .query
                .get("resourceVersion")
                .is_some_and(|rv| rv != "0"),
            "{watch:?}"
        );
    }
    h.stop().await
}

#[tokio::test]
async fn service_cidrs_are_listed_and_watched_cluster_wide() -> Result<()> {
    let mut h = Harness::start("service-cidrs", |server| {
        seed_two_services(server)?;
        server.apply(&service_cidr(
            "kubernetes",
            &["198.19.0.0/17", "fd00:19::/108"],
        ))?;
        Ok(())
    })
    .await?;
    let seen = h.synced().await?;
    assert_eq!(
        strings(&of_kind(&seen, "ServiceCIDR")),
        [
            "ServiceCIDR Init",
            "ServiceCIDR InitApply kubernetes",
            "ServiceCIDR InitDone"
        ]
    );
    let listed = h
        .events
        .object("ServiceCIDR", "kubernetes")
        .context("ServiceCIDR kubernetes")?;
    assert_eq!(listed["spec"]["cidrs"][0], "198.19.0.0/17");
    assert_eq!(listed["spec"]["cidrs"][1], "fd00:19::/108");
    // All of them, cluster-wide: no namespace, no selector.
    let requests = h.server.requests();
    let lists: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/apis/networking.k8s.io/v1/servicecidrs")
        .collect();
    ensure!(!lists.is_empty(), "no list or watch of servicecidrs");
    for r in &lists {
        assert_eq!(r.query.get("labelSelector"), None, "{r:?}");
        assert_eq!(r.query.get("fieldSelector"), None, "{r:?}");
    }

    h.server
        .apply(&service_cidr("extra", &["198.19.128.0/17"]))?;
    h.server
        .delete::<ServiceCIDR>("", "extra")
        .context("extra existed")?;
    h.server
        .apply(&service_cidr("sentinel", &["fd00:19::/112"]))?;
    let mut seen = Vec::new();
    while !seen.contains(&Seen::Apply("ServiceCIDR", "sentinel".into())) {
        seen.push(h.events.next().await?);
    }
    assert_eq!(
        strings(&of_kind(&seen, "ServiceCIDR")),
        [
            "ServiceCIDR Apply extra",
            "ServiceCIDR Delete extra",
            "ServiceCIDR Apply sentinel"
        ]
    );
    assert_eq!(h.events.names("ServiceCIDR"), ["kubernetes", "sentinel"]);
    h.stop().await
}

#[tokio::test]
async fn changes_arrive_as_apply_and_delete_and_other_proxies_objects_never() -> Result<()> {
    let mut h = Harness::start("changes", |server| {
        seed_two_services(server)?;
        server.apply(&node("n2"))?;
        server.apply(&slice("a-1", "a", &[])).map(|_| ())
    })
    .await?;
    h.synced().await?;

    h.server.apply(&service("c", "198.19.0.3"))?;
    h.server.apply(&service("a", "198.19.0.11"))?;
    h.server
        .delete::<Service>("default", "b")
        .context("b existed")?;
    h.server.apply(&labelled_service(
        "other",
        "198.19.0.4",
        &[(LABEL_SERVICE_PROXY_NAME, "x")],
    ))?;
    h.server.apply(&node("n2"))?;
    h.server.apply(&slice(
        "other-1",
        "other",
        &[(LABEL_SERVICE_PROXY_NAME, "x")],
    ))?;
    h.server.apply(&node(NODE))?;
    // Handing `a` to another proxy makes it vanish for us.
    h.server.apply(&labelled_service(
        "a",
        "198.19.0.11",
        &[(LABEL_SERVICE_PROXY_NAME, "x")],
    ))?;
    // Sentinels: everything before them in each stream has arrived once they have.
    h.server.apply(&service("sentinel", "198.19.0.99"))?;
    h.server.apply(&slice("sentinel-1", "sentinel", &[]))?;

    let mut seen = Vec::new();
    while !(seen.contains(&Seen::Apply("Service", "default/sentinel".into()))
        && seen.contains(&Seen::Apply("EndpointSlice", "default/sentinel-1".into()))
        && seen.contains(&Seen::Apply("Node", NODE.into())))
    {
        seen.push(h.events.next().await?);
    }
    assert_eq!(
        strings(&of_kind(&seen, "Service")),
        [
            "Service Apply default/c",
            "Service Apply default/a",
            "Service Delete default/b",
            "Service Delete default/a",
            "Service Apply default/sentinel"
        ]
    );
    assert_eq!(
        strings(&of_kind(&seen, "EndpointSlice")),
        ["EndpointSlice Apply default/sentinel-1"]
    );
    assert_eq!(strings(&of_kind(&seen, "Node")), ["Node Apply n1"]);
    assert_eq!(h.events.names("Service"), ["default/c", "default/sentinel"]);
    h.stop().await
}

#[tokio::test]
async fn relist_after_410_drops_objects_deleted_meanwhile_at_init_done() -> Result<()> {
    let mut h = Harness::start("gone", seed_two_services).await?;
    h.synced().await?;

    // Cut the client off, change things and forget the history it would resume from.
    h.server.hold_watches();
    h.server.drop_watches();
    h.server
        .delete::<Service>("default", "b")
        .context("b existed")?;
    h.server.apply(&service("c", "198.19.0.3"))?;
    h.server.compact();
    h.server.release_watches();

    let seen = h.events.until_listed(&["Service"], 2).await?;
    assert_eq!(
        strings(&of_kind(&seen, "Service")),
        [
            "Service Init",
            "Service InitApply default/a",
            "Service InitApply default/c",
            "Service InitDone"
        ],
        "b must go by the relist, not by a Delete of its own"
    );
    assert_eq!(h.events.names("Service"), ["default/a", "default/c"]);

    // And the watch goes on after the relist.
    h.watching().await?;
    h.server.apply(&service("d", "198.19.0.4"))?;
    let next = h
        .events
        .take_until(|s| s.kind() == "Service" && !matches!(s, Seen::InitApply(..)))
        .await?;
    assert_eq!(
        next.last(),
        Some(&Seen::Apply("Service", "default/d".into()))
    );
    h.stop().await
}

#[tokio::test]
async fn gone_on_an_open_watch_relists() -> Result<()> {
    let mut h = Harness::start("expired", seed_two_services).await?;
    h.synced().await?;

    h.server.expire_watches();
    let seen = h.events.until_listed(&["Service", "Node"], 2).await?;
    assert_eq!(
        strings(&of_kind(&seen, "Service")),
        [
            "Service Init",
            "Service InitApply default/a",
            "Service InitApply default/b",
            "Service InitDone"
        ]
    );
    assert_eq!(
        strings(&of_kind(&seen, "Node")),
        ["Node Init", "Node InitApply n1", "Node InitDone"]
    );
    h.stop().await
}

#[tokio::test]
async fn dropped_connections_resume_without_missing_anything() -> Result<()> {
    let mut h = Harness::start("dropped", seed_two_services).await?;
    h.synced().await?;

    // Disconnected while three changes happen: they come as a replay, not a relist.
    h.server.hold_watches();
    h.server.drop_watches();
    h.server.apply(&service("c", "198.19.0.3"))?;
    h.server.apply(&service("a", "198.19.0.11"))?;
    h.server
        .delete::<Service>("default", "b")
        .context("b existed")?;
    h.server.release_watches();
    let seen = h
        .events
        .take_until(|s| *s == Seen::Delete("Service", "default/b".into()))
        .await?;
    assert_eq!(
        strings(&of_kind(&seen, "Service")),
        [
            "Service Apply default/c",
            "Service Apply default/a",
            "Service Delete default/b"
        ]
    );

    // Connections dropped again and again, each time with a change right after.
    for round in 0..5 {
        h.watching().await?;
        h.server.drop_watches();
        h.server
            .apply(&service(&format!("s{round}"), &format!("198.19.1.{round}")))?;
    }
    h.events
        .take_until(|s| *s == Seen::Apply("Service", "default/s4".into()))
        .await?;
    assert_eq!(
        h.events.names("Service"),
        [
            "default/a",
            "default/c",
            "default/s0",
            "default/s1",
            "default/s2",
            "default/s3",
            "default/s4"
        ]
    );
    let a = h
        .events
        .object("Service", "default/a")
        .context("Service a")?;
    assert_eq!(a["spec"]["clusterIP"], "198.19.0.11");
    let relists = h
        .events
        .seen
        .iter()
        .filter(|s| **s == Seen::Init("Service"))
        .count();
    assert_eq!(
        relists,
        1,
        "resumed watches must not relist: {}",
        h.events.history()
    );
    h.stop().await
}

#[tokio::test]
async fn an_unreadable_kubeconfig_is_an_error() -> Result<()> {
    let dir = TempDir::new("badconfig")?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "this: [is not a kubeconfig")?;
    let (tx, _rx) = mpsc::channel(1);
    let config = KubeSourceConfig {
        kubeconfig: Some(kubeconfig),
        node_name: None,
        network_policy: true,
    };
    let outcome = kube_api::run(config, tx, CancellationToken::new()).await;
    let error = outcome.err().context("a broken kubeconfig must fail")?;
    assert!(format!("{error:#}").contains("kubeconfig"), "{error:#}");
    Ok(())
}

/// A Pod as the API server returns it: managedFields, annotations, images, env and more
/// that the policy model never reads.
fn fat_pod(namespace: &str, name: &str, app: &str, ip: &str) -> Pod {
    let mut metadata = meta(Some(namespace), name, &[("app", app)]);
    metadata.annotations = Some(BTreeMap::from([(
        "kubectl.kubernetes.io/last-applied-configuration".to_string(),
        "x".repeat(2048),
    )]));
    metadata.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some("kubelet".into()),
        ..ManagedFieldsEntry::default()
    }]);
    Pod {
        metadata,
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            containers: vec![Container {
                name: "web".into(),
                image: Some("registry.example/web:1".into()),
                env: Some(vec![EnvVar {
                    name: "BIG".into(),
                    value: Some("v".repeat(1024)),
                    ..EnvVar::default()
                }]),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            host_ip: Some("198.19.255.1".into()),
            ..PodStatus::default()
        }),
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: meta(None, name, labels),
        ..Namespace::default()
    }
}

fn network_policy(namespace: &str, name: &str) -> Result<NetworkPolicy> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": {"note": "y".repeat(512)}},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}],
                              "ports": [{"port": "http"}]}]}
    }))?)
}

fn seed_policy_objects(server: &FakeApiServer) -> Result<()> {
    seed_two_services(server)?;
    server.apply(&namespace("x", &[("team", "a")]))?;
    server.apply(&namespace("y", &[]))?;
    server.apply(&fat_pod("x", "a", "web", "198.18.1.10"))?;
    server.apply(&fat_pod("y", "b", "db", "198.18.1.11"))?;
    server.apply(&network_policy("x", "web")?)?;
    Ok(())
}

#[tokio::test]
async fn policy_kinds_are_listed_stripped_and_followed() -> Result<()> {
    let mut h = Harness::start_with("policy", true, seed_policy_objects).await?;
    let seen = h.synced().await?;
    for (kind, names) in [
        ("Pod", vec!["Pod InitApply x/a", "Pod InitApply y/b"]),
        (
            "Namespace",
            vec!["Namespace InitApply x", "Namespace InitApply y"],
        ),
        ("NetworkPolicy", vec!["NetworkPolicy InitApply x/web"]),
    ] {
        let mut expected = vec![format!("{kind} Init")];
        expected.extend(names.into_iter().map(String::from));
        expected.push(format!("{kind} InitDone"));
        assert_eq!(strings(&of_kind(&seen, kind)), expected);
    }

    // What travels is what the model reads, nothing more.
    let pod = h.events.object("Pod", "x/a").context("pod x/a")?.clone();
    assert_eq!(pod["metadata"]["labels"]["app"], "web");
    assert_eq!(pod["spec"]["nodeName"], NODE);
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0],
        serde_json::json!({"name": "http", "containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(pod["status"]["podIPs"][0]["ip"], "198.18.1.10");
    assert_eq!(pod["status"]["phase"], "Running");
    for gone in [
        &pod["metadata"]["managedFields"],
        &pod["metadata"]["annotations"],
        &pod["spec"]["containers"][0]["image"],
        &pod["spec"]["containers"][0]["env"],
        &pod["status"]["hostIP"],
    ] {
        assert!(gone.is_null(), "not stripped: {pod}");
    }
    let policy = h
        .events
        .object("NetworkPolicy", "x/web")
        .context("policy x/web")?;
    assert!(policy["metadata"]["annotations"].is_null(), "{policy}");
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"][0]["port"], "http",
        "{policy}"
    );
    let ns = h.events.object("Namespace", "x").context("namespace x")?;
    assert_eq!(ns["metadata"]["labels"]["team"], "a");

    // Changes follow as Apply and Delete.
    h.server.apply(&fat_pod("x", "a", "api", "198.18.1.10"))?;
    let next = h.events.take_until(|s| s.kind() == "Pod").await?;
    assert_eq!(next.last(), Some(&Seen::Apply("Pod", "x/a".into())));
    assert_eq!(
        h.events
            .object("Pod", "x/a")
            .map(|p| p["metadata"]["labels"]["app"].clone()),
        Some(serde_json::json!("api"))
    );
    h.server
        .delete::<NetworkPolicy>("x", "web")
        .context("the policy existed")?;
    let next = h.events.take_until(|s| s.kind() == "NetworkPolicy").await?;
    assert_eq!(
        next.last(),
        Some(&Seen::Delete("NetworkPolicy", "x/web".into()))
    );
    h.server.apply(&namespace("y", &[("team", "a")]))?;
    let next = h.events.take_until(|s| s.kind() == "Namespace").await?;
    assert_eq!(next.last(), Some(&Seen::Apply("Namespace", "y".into())));
    h.stop().await
}

#[tokio::test]
async fn a_pod_deleted_during_a_410_relist_goes_at_init_done() -> Result<()> {
    let mut h = Harness::start_with("policy-gone", true, seed_policy_objects).await?;
    h.synced().await?;
    h.server.hold_watches();
    h.server.drop_watches();
    h.server
        .delete::<Pod>("y", "b")
        .context("pod y/b existed")?;
    h.server.apply(&fat_pod("y", "c", "db", "198.18.1.12"))?;
    h.server.compact();
    h.server.release_watches();

    let seen = h.events.until_listed(&["Pod"], 2).await?;
    let pods: Vec<String> = strings(&of_kind(&seen, "Pod"));
    let relist_start = pods
        .iter()
        .rposition(|s| s == "Pod Init")
        .context("a relist of Pods")?;
    assert_eq!(
        pods[relist_start..],
        [
            "Pod Init",
            "Pod InitApply x/a",
            "Pod InitApply y/c",
            "Pod InitDone"
        ],
        "b must go by the relist, not by a Delete of its own"
    );
    assert!(
        !pods.iter().any(|s| s.starts_with("Pod Delete")),
        "{pods:?}"
    );
    assert_eq!(h.events.names("Pod"), ["x/a", "y/c"]);
    h.stop().await
}

#[tokio::test]
async fn network_policy_off_watches_no_policy_kind() -> Result<()> {
    let mut h = Harness::start_with("policy-off", false, seed_policy_objects).await?;
    h.synced().await?;
    let paths: Vec<String> = h.server.requests().into_iter().map(|r| r.path).collect();
    assert!(!paths.is_empty());
    for path in &paths {
        assert!(
            !["/pods", "/namespaces", "/networkpolicies"]
                .iter()
                .any(|p| path.ends_with(p)),
            "{path} requested with --network-policy off"
        );
    }
    assert!(h.events.names("Pod").is_empty());
    h.stop().await
}
