//! The manifests-folder source (`service_lb::source::manifests::run`) on temporary folders:
//! initial list, create/modify/delete/rename/write-then-rename, multi-document files, bad
//! files keeping their last good objects, unknown kinds, duplicates across files, a folder
//! that disappears, and debouncing. No root needed.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use service_lb::source::manifests::{self, ManifestsConfig};
use service_lb_tests::fake_apiserver::recorder::{Recorder, Seen};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

const KINDS: [&str; 7] = [
    "Service",
    "EndpointSlice",
    "Node",
    "ServiceCIDR",
    "Pod",
    "Namespace",
    "NetworkPolicy",
];
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Namespace of the sentinel Services that mark "everything before has arrived".
const SENTINEL_NAMESPACE: &str = "zz-sentinel";

fn service_yaml(name: &str, cluster_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n"
    )
}

fn slice_yaml(name: &str, service: &str, address: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n\
         \x20 labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\n\
         endpoints:\n- addresses: [{address}]\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n"
    )
}

fn node_yaml(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
}

fn service_cidr_yaml(name: &str, cidrs: &[&str]) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata:\n  name: {name}\n\
         spec:\n  cidrs: [{}]\n",
        cidrs.join(", ")
    )
}

fn documents(docs: &[String]) -> String {
    docs.iter()
        .map(|d| format!("---\n{d}"))
        .collect::<Vec<_>>()
        .join("")
}

/// A temporary manifests folder, removed on drop.
struct Folder(PathBuf);

impl Folder {
    fn new(test: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "slb-source-manifests-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    fn write(&self, file: &str, text: &str) -> Result<()> {
        std::fs::write(self.path(file), text).with_context(|| format!("writing {file}"))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        std::fs::rename(self.path(from), self.path(to)).with_context(|| format!("{from} -> {to}"))
    }

    fn remove(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.path(file)).with_context(|| format!("removing {file}"))
    }

    fn dir(&self) -> &Path {
        &self.0
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real source on a folder, and what it sent.
struct Harness {
    folder: Folder,
    events: Recorder,
    cancel: CancellationToken,
    source: Option<JoinHandle<Result<()>>>,
}

impl Harness {
    /// `seed` fills the folder before the source starts.
    fn start(
        test: &str,
        debounce: Duration,
        seed: impl FnOnce(&Folder) -> Result<()>,
    ) -> Result<Self> {
        let folder = Folder::new(test)?;
        seed(&folder)?;
        let (tx, rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let config = ManifestsConfig {
            dir: folder.dir().to_path_buf(),
            node_name: Some("n1".into()),
            debounce,
        };
        let source = tokio::spawn(manifests::run(config, tx, cancel.clone()));
        Ok(Self {
            folder,
            events: Recorder::new(rx),
            cancel,
            source: Some(source),
        })
    }

    async fn synced(&mut self) -> Result<Vec<Seen>> {
        self.events.until_listed(&KINDS, 1).await
    }

    /// Writes a sentinel Service in its own file and returns every event up to its Apply:
    /// all that the earlier changes caused. Its namespace sorts after the tests' own, so it
    /// comes last even when it is read in the same batch as they are.
    async fn settle(&mut self, sentinel: &str) -> Result<Vec<String>> {
        let text = service_yaml(sentinel, "198.19.9.9").replace(
            "namespace: default",
            &format!("namespace: {SENTINEL_NAMESPACE}"),
        );
        self.folder.write(&format!("zz-{sentinel}.yaml"), &text)?;
        let wanted = Seen::Apply("Service", format!("{SENTINEL_NAMESPACE}/{sentinel}"));
        let mut seen = self.events.take_until(|s| *s == wanted).await?;
        seen.pop();
        Ok(seen.iter().map(ToString::to_string).collect())
    }

    fn cluster_ip(&self, name: &str) -> Option<String> {
        let service = self.events.object("Service", &format!("default/{name}"))?;
        service["spec"]["clusterIP"].as_str().map(str::to_owned)
    }

    async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        let source = self.source.take().context("already stopped")?;
        tokio::time::timeout(Duration::from_secs(30), source)
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

fn of_kind(seen: &[Seen], kind: &str) -> Vec<String> {
    seen.iter()
        .filter(|s| s.kind() == kind)
        .map(ToString::to_string)
        .collect()
}

/// A kind's initial list: `Init`, its `InitApply`s sorted (files are parsed in parallel and
/// sent as each is done, so the order is not fixed), `InitDone`.
fn initial_list(seen: &[Seen], kind: &str) -> Vec<String> {
    let mut list = of_kind(seen, kind);
    let init = format!("{kind} Init");
    let done = format!("{kind} InitDone");
    assert_eq!(list.first(), Some(&init), "{list:?}");
    assert_eq!(list.last(), Some(&done), "{list:?}");
    let len = list.len();
    list[1..len - 1].sort();
    list
}

#[tokio::test]
async fn initial_list_of_every_kind_from_eligible_files_only() -> Result<()> {
    let mut h = Harness::start("initial", DEBOUNCE, |folder| {
        folder.write(
            "web.yaml",
            &documents(&[
                service_yaml("web", "198.19.0.1"),
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ignored\n".into(),
                slice_yaml("web-1", "web", "198.18.1.10"),
                service_yaml("api", "198.19.0.2"),
            ]),
        )?;
        folder.write(
            "dns.json",
            r#"{"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "dns", "namespace": "kube-system"},
                "spec": {"clusterIP": "198.19.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}}"#,
        )?;
        folder.write("nodes.yml", &documents(&[node_yaml("n1"), node_yaml("n2")]))?;
        for skipped in [
            ".hidden.yaml",
            "web.yaml~",
            "#web.yaml#",
            ".web.yaml.swp",
            "notes.txt",
        ] {
            folder.write(skipped, &service_yaml("skipped", "198.19.0.99"))?;
        }
        Ok(())
    })?;
    let seen = h.synced().await?;
    assert_eq!(
        initial_list(&seen, "Service"),
        [
            "Service Init",
            "Service InitApply default/api",
            "Service InitApply default/web",
            "Service InitApply kube-system/dns",
            "Service InitDone"
        ]
    );
    assert_eq!(
        initial_list(&seen, "EndpointSlice"),
        [
            "EndpointSlice Init",
            "EndpointSlice InitApply default/web-1",
            "EndpointSlice InitDone"
        ]
    );
    assert_eq!(
        initial_list(&seen, "Node"),
        ["Node Init", "Node InitApply n1", "Node InitDone"]
    );
    assert!(of_kind(&seen, "Rejected").is_empty(), "{seen:?}");
    assert_eq!(h.cluster_ip("web").as_deref(), Some("198.19.0.1"));
    h.stop().await
}

#[tokio::test]
async fn service_cidrs_are_read_cluster_scoped_and_followed() -> Result<()> {
    let mut h = Harness::start("service-cidrs", DEBOUNCE, |folder| {
        folder.write(
            "cidrs.yaml",
            &documents(&[
                service_cidr_yaml("kubernetes", &["198.19.0.0/17", "fd00:19::/108"]),
                service_yaml("web", "198.19.0.1"),
            ]),
        )
    })?;
    let seen = h.synced().await?;
    assert_eq!(
        initial_list(&seen, "ServiceCIDR"),
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
    assert_eq!(listed["spec"]["cidrs"][1], "fd00:19::/108");
    assert!(
        listed["metadata"].get("namespace").is_none(),
        "cluster-scoped: no namespace is added: {listed}"
    );

    // (A batch sends Services first, so a sentinel Service does not mark the end of a
    // ServiceCIDR change: wait for the ServiceCIDR event itself.)
    h.folder.write(
        "extra.yaml",
        &service_cidr_yaml("extra", &["198.19.128.0/17"]),
    )?;
    let applied = Seen::Apply("ServiceCIDR", "extra".into());
    let seen = h.events.take_until(|s| *s == applied).await?;
    assert_eq!(seen, [applied]);
    h.folder.remove("extra.yaml")?;
    let deleted = Seen::Delete("ServiceCIDR", "extra".into());
    let seen = h.events.take_until(|s| *s == deleted).await?;
    assert_eq!(seen, [deleted]);
    // Another apiVersion of a known kind makes the file an error (its objects stay).
    h.folder.write(
        "cidrs.yaml",
        &service_cidr_yaml("kubernetes", &["198.19.0.0/16"])
            .replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1"),
    )?;
    let seen = h.events.take_until(|s| s.kind() == "Rejected").await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(h.settle("s1").await?, Vec::<String>::new());
    assert_eq!(h.events.names("ServiceCIDR"), ["kubernetes"]);
    h.stop().await
}

#[tokio::test]
async fn create_modify_delete_and_renames_send_only_differences() -> Result<()> {
    let mut h = Harness::start("changes", DEBOUNCE, |folder| {
        folder.write(
            "a.yaml",
            &documents(&[
                service_yaml("a", "198.19.0.1"),
                service_yaml("b", "198.19.0.2"),
            ]),
        )
    })?;
    h.synced().await?;

    // Create.
    h.folder
        .write("new.yaml", &service_yaml("new", "198.19.0.3"))?;
    assert_eq!(h.settle("s1").await?, ["Service Apply default/new"]);
    // Modify one object of a multi-document file; rewriting the same content is no change.
    h.folder.write(
        "a.yaml",
        &documents(&[
            service_yaml("a", "198.19.0.1"),
            service_yaml("b", "198.19.0.22"),
        ]),
    )?;
    h.folder
        .write("new.yaml", &service_yaml("new", "198.19.0.3"))?;
    assert_eq!(h.settle("s2").await?, ["Service Apply default/b"]);
    assert_eq!(h.cluster_ip("b").as_deref(), Some("198.19.0.22"));
    // Delete.
    h.folder.remove("new.yaml")?;
    assert_eq!(h.settle("s3").await?, ["Service Delete default/new"]);
    // Rename to another manifest name: the same objects, nothing to tell.
    h.folder.rename("a.yaml", "c.yaml")?;
    assert_eq!(h.settle("s4").await?, Vec::<String>::new());
    // Rename to a name that is not a manifest: its objects go.
    h.folder.rename("c.yaml", "c.yaml.bak")?;
    assert_eq!(
        h.settle("s5").await?,
        ["Service Delete default/a", "Service Delete default/b"]
    );
    // An editor's write to a temp file, then rename over the target.
    h.folder
        .write("edited.yaml", &service_yaml("edited", "198.19.0.7"))?;
    assert_eq!(h.settle("s6").await?, ["Service Apply default/edited"]);
    h.folder
        .write(".edited.yaml.tmp", &service_yaml("edited", "198.19.0.8"))?;
    h.folder.rename(".edited.yaml.tmp", "edited.yaml")?;
    assert_eq!(h.settle("s7").await?, ["Service Apply default/edited"]);
    assert_eq!(h.cluster_ip("edited").as_deref(), Some("198.19.0.8"));
    let ours: Vec<String> = h
        .events
        .names("Service")
        .into_iter()
        .filter(|n| !n.starts_with(SENTINEL_NAMESPACE))
        .collect();
    assert_eq!(ours, ["default/edited"]);
    h.stop().await
}

#[tokio::test]
async fn a_bad_file_is_rejected_with_its_line_and_keeps_its_last_good_objects() -> Result<()> {
    let broken = "# comment\n\nkind: Service: [broken\n";
    let mut h = Harness::start("bad", DEBOUNCE, |folder| {
        folder.write(
            "good.yaml",
            &documents(&[
                service_yaml("a", "198.19.0.1"),
                service_yaml("b", "198.19.0.2"),
            ]),
        )?;
        folder.write("broken.yaml", broken)
    })?;
    let seen = h.synced().await?;
    let broken_at = format!("{}:3", h.folder.path("broken.yaml").display());
    // Reported during the initial read, before the lists are complete.
    let rejected_at = seen
        .iter()
        .position(|s| *s == Seen::Rejected(broken_at.clone(), "parse_error"));
    let done_at = seen.iter().position(|s| *s == Seen::InitDone("Service"));
    assert!(rejected_at.is_some() && rejected_at < done_at, "{seen:?}");
    assert_eq!(h.events.names("Service"), ["default/a", "default/b"]);

    // The good file goes bad: rejected, and a and b stay.
    h.folder.write("good.yaml", broken)?;
    let good_at = format!("{}:3", h.folder.path("good.yaml").display());
    assert_eq!(
        h.settle("s1").await?,
        [format!("Rejected parse_error {good_at}")]
    );
    assert!(h.events.object("Service", "default/a").is_some());
    assert!(h.events.object("Service", "default/b").is_some());

    // Fixed, without b: only b goes.
    h.folder
        .write("good.yaml", &service_yaml("a", "198.19.0.1"))?;
    assert_eq!(h.settle("s2").await?, ["Service Delete default/b"]);

    // A document of a known kind that does not deserialize rejects the whole file too.
    h.folder.write(
        "good.yaml",
        &documents(&[
            service_yaml("c", "198.19.0.3"),
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: d\nspec:\n  ports: 80\n".into(),
        ]),
    )?;
    let seen = h.settle("s3").await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("Rejected parse_error"), "{seen:?}");
    assert!(h.events.object("Service", "default/c").is_none());
    assert!(h.events.object("Service", "default/a").is_some());
    h.stop().await
}

#[tokio::test]
async fn the_same_object_in_two_files_the_last_by_name_wins() -> Result<()> {
    let mut h = Harness::start("duplicates", DEBOUNCE, |folder| {
        folder.write("10-web.yaml", &service_yaml("web", "198.19.0.1"))?;
        folder.write("20-web.yaml", &service_yaml("web", "198.19.0.2"))
    })?;
    let seen = h.synced().await?;
    // Sent once, or once per file when 10-web.yaml was parsed first: either way the
    // version of 20-web.yaml comes last and is the one in effect.
    let list = initial_list(&seen, "Service");
    assert!(
        (3..=4).contains(&list.len())
            && list[1..list.len() - 1]
                .iter()
                .all(|l| l == "Service InitApply default/web"),
        "{list:?}"
    );
    assert_eq!(h.cluster_ip("web").as_deref(), Some("198.19.0.2"));
    // A change to the losing file changes nothing.
    h.folder
        .write("10-web.yaml", &service_yaml("web", "198.19.0.3"))?;
    assert_eq!(h.settle("s1").await?, Vec::<String>::new());
    // The winner goes: the other file's version takes over.
    h.folder.remove("20-web.yaml")?;
    assert_eq!(h.settle("s2").await?, ["Service Apply default/web"]);
    assert_eq!(h.cluster_ip("web").as_deref(), Some("198.19.0.3"));
    h.stop().await
}

#[tokio::test]
async fn a_removed_folder_keeps_the_state_until_it_is_back() -> Result<()> {
    let mut h = Harness::start("folder", DEBOUNCE, |folder| {
        folder.write(
            "a.yaml",
            &documents(&[
                service_yaml("a", "198.19.0.1"),
                service_yaml("b", "198.19.0.2"),
            ]),
        )
    })?;
    h.synced().await?;
    std::fs::remove_dir_all(h.folder.dir())?;
    // Give the source time to notice (not a check: any interleaving must give the same events).
    tokio::time::sleep(DEBOUNCE * 5).await;
    std::fs::create_dir_all(h.folder.dir())?;
    h.folder.write("a.yaml", &service_yaml("a", "198.19.0.1"))?;
    // a never went away, b goes now; no relist.
    assert_eq!(h.settle("s1").await?, ["Service Delete default/b"]);
    assert_eq!(h.events.lists_done("Service"), 1);
    h.stop().await
}

#[tokio::test]
async fn a_burst_of_writes_is_read_once_after_the_quiet_time() -> Result<()> {
    let debounce = Duration::from_millis(500);
    let mut h = Harness::start("burst", debounce, |_| Ok(()))?;
    h.synced().await?;
    for i in 1..=20 {
        h.folder
            .write("web.yaml", &service_yaml("web", &format!("198.19.0.{i}")))?;
    }
    let seen = h.settle("s1").await?;
    assert_eq!(seen, ["Service Apply default/web"], "one burst, one change");
    assert_eq!(h.cluster_ip("web").as_deref(), Some("198.19.0.20"));
    h.stop().await
}

#[tokio::test]
async fn a_missing_folder_sends_no_list_until_it_exists() -> Result<()> {
    let mut h = Harness::start("missing", DEBOUNCE, |folder| {
        std::fs::remove_dir_all(folder.dir()).context("removing the folder")
    })?;
    // Let the source find no folder (not a check: it must wait however long this takes).
    tokio::time::sleep(DEBOUNCE * 3).await;
    assert!(
        h.events.drain_ready()?.is_empty(),
        "nothing before the folder exists"
    );
    // The folder appears whole (renamed into place), so its first list is known.
    let staging = h.folder.dir().with_extension("staging");
    std::fs::create_dir_all(&staging)?;
    std::fs::write(staging.join("a.yaml"), service_yaml("a", "198.19.0.1"))?;
    std::fs::rename(&staging, h.folder.dir())?;
    let seen = h.synced().await?;
    assert_eq!(
        of_kind(&seen, "Service"),
        [
            "Service Init",
            "Service InitApply default/a",
            "Service InitDone"
        ]
    );
    h.stop().await
}

fn pod_yaml(namespace: &str, name: &str, app: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         \x20 labels: {{app: {app}}}\n  annotations: {{big: \"{}\"}}\n\
         spec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: registry.example/c:1\n\
         \x20   ports:\n    - {{name: http, containerPort: 8080}}\n\
         status:\n  phase: Running\n  hostIP: 198.19.255.1\n  podIPs: [{{ip: {ip}}}]\n",
        "x".repeat(256)
    )
}

fn namespace_yaml(name: &str, team: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{team: {team}}}\n"
    )
}

fn policy_yaml(namespace: &str, name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n\
         \x20 - from: [{{namespaceSelector: {{matchLabels: {{team: a}}}}}}]\n    ports: [{{port: {port}}}]\n"
    )
}

#[tokio::test]
async fn pods_namespaces_and_network_policies_are_listed_stripped_and_kept_when_bad() -> Result<()>
{
    let mut h = Harness::start("policy", DEBOUNCE, |folder| {
        folder.write(
            "pods.yaml",
            &documents(&[
                pod_yaml("x", "a", "web", "198.18.1.10"),
                // No namespace: `default`, as kubectl does.
                pod_yaml("x", "b", "db", "198.18.1.11").replace("  namespace: x\n", ""),
            ]),
        )?;
        folder.write(
            "namespaces.yaml",
            &documents(&[namespace_yaml("x", "a"), namespace_yaml("y", "b")]),
        )?;
        folder.write("policy.yaml", &policy_yaml("x", "web", 80))
    })?;
    let seen = h.synced().await?;
    assert_eq!(
        initial_list(&seen, "Pod"),
        [
            "Pod Init",
            "Pod InitApply default/b",
            "Pod InitApply x/a",
            "Pod InitDone"
        ]
    );
    assert_eq!(
        initial_list(&seen, "Namespace"),
        [
            "Namespace Init",
            "Namespace InitApply x",
            "Namespace InitApply y",
            "Namespace InitDone"
        ],
        "Namespaces are cluster-scoped: no `default` namespace is added"
    );
    assert_eq!(
        initial_list(&seen, "NetworkPolicy"),
        [
            "NetworkPolicy Init",
            "NetworkPolicy InitApply x/web",
            "NetworkPolicy InitDone"
        ]
    );
    let pod = h.events.object("Pod", "x/a").context("pod x/a")?;
    assert_eq!(pod["metadata"]["labels"]["app"], "web");
    assert_eq!(pod["status"]["podIPs"][0]["ip"], "198.18.1.10");
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0]["containerPort"],
        8080
    );
    for gone in [
        &pod["metadata"]["annotations"],
        &pod["spec"]["containers"][0]["image"],
        &pod["status"]["hostIP"],
    ] {
        assert!(gone.is_null(), "not stripped: {pod}");
    }

    // A policy change is an Apply; a policy of an unsupported apiVersion rejects its file,
    // whose last good policy stays. (`settle`'s sentinel Service sorts before other kinds
    // read in the same batch, so these wait for their own event, then settle for strays.)
    let until = |kind: &'static str| move |s: &Seen| s.kind() == kind || s.kind() == "Rejected";
    h.folder
        .write("policy.yaml", &policy_yaml("x", "web", 81))?;
    let seen = h.events.take_until(until("NetworkPolicy")).await?;
    assert_eq!(seen, [Seen::Apply("NetworkPolicy", "x/web".into())]);
    assert_eq!(h.settle("s1").await?, Vec::<String>::new());
    let port = |h: &Harness| {
        h.events
            .object("NetworkPolicy", "x/web")
            .map(|p| p["spec"]["ingress"][0]["ports"][0]["port"].clone())
    };
    assert_eq!(port(&h), Some(serde_json::json!(81)));
    h.folder.write(
        "policy.yaml",
        &policy_yaml("x", "web", 82).replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1"),
    )?;
    let seen = h.events.take_until(until("NetworkPolicy")).await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        matches!(&seen[0], Seen::Rejected(_, "parse_error")),
        "{seen:?}"
    );
    assert_eq!(h.settle("s2").await?, Vec::<String>::new());
    assert_eq!(
        port(&h),
        Some(serde_json::json!(81)),
        "the last good policy stays"
    );

    // A pod that does not deserialize (containerPort is a number) rejects its file too.
    h.folder.write(
        "pods.yaml",
        &pod_yaml("x", "a", "api", "198.18.1.10")
            .replace("containerPort: 8080", "containerPort: [8080]"),
    )?;
    let seen = h.events.take_until(until("Pod")).await?;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        matches!(&seen[0], Seen::Rejected(_, "parse_error")),
        "{seen:?}"
    );
    assert_eq!(h.settle("s3").await?, Vec::<String>::new());
    assert_eq!(h.events.names("Pod"), ["default/b", "x/a"]);

    // Removing the namespaces file deletes both.
    h.folder.remove("namespaces.yaml")?;
    let seen = h
        .events
        .take_until(|s| *s == Seen::Delete("Namespace", "y".into()))
        .await?;
    assert_eq!(
        seen,
        [
            Seen::Delete("Namespace", "x".into()),
            Seen::Delete("Namespace", "y".into())
        ]
    );
    assert_eq!(h.settle("s4").await?, Vec::<String>::new());
    h.stop().await
}
