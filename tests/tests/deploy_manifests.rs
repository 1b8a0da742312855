//! The manifests in deploy/ are valid Kubernetes objects for the versions we support, and
//! everything the DaemonSet hands the daemon (flags, SERVICE_LB_* environment variables,
//! ConfigMap keys) is something the daemon's own clap definition reads, with values it
//! parses.
//!
//! Schema validation uses `kubernetes-validate` (PyPI) from the virtualenv that
//! `cargo xtask setup` creates (`$XDG_CACHE_HOME/service-lb/venv`, else
//! `~/.cache/service-lb/venv`). Without it the test fails under CI=true and is skipped
//! with a message otherwise.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use clap::{CommandFactory as _, Parser as _};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container},
};
use serde::Deserialize;
use service_lb::cli::{Cli, Command as CliCommand};

/// Kubernetes versions the manifests must validate against (k8s-openapi's feature is
/// v1_33; newer releases keep these APIs).
const KUBERNETES_VERSIONS: [&str; 3] = ["1.33.0", "1.34.0", "1.35.0"];
/// Kinds kubernetes-validate has no schema for (CRDs), validated elsewhere or not at all.
const CUSTOM_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];
/// Environment variables of the DaemonSet that are not clap flags, and who reads them.
const NON_FLAG_ENV: [(&str, &str); 3] = [
    ("NODE_NAME", "`run` falls back to it for --node-name"),
    ("KUBERNETES_SERVICE_HOST", "kube's in-cluster config"),
    ("KUBERNETES_SERVICE_PORT", "kube's in-cluster config"),
];
/// kube-proxy's metrics and health ports: the DaemonSet must not take them while both run.
const KUBE_PROXY_PORTS: [u16; 2] = [10249, 10256];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML file under deploy/ (examples included), sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [deploy_dir(), deploy_dir().join("examples")] {
        for entry in std::fs::read_dir(&dir).expect("deploy/ is readable") {
            let path = entry.expect("deploy/ entry").path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn validation_venv() -> PathBuf {
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"),
    };
    cache.join("service-lb").join("venv")
}

#[test]
fn every_manifest_validates_against_the_supported_kubernetes_versions() {
    let validator = validation_venv().join("bin").join("kubernetes-validate");
    if !validator.exists() {
        let why = format!(
            "{} is missing: run `cargo xtask setup`",
            validator.display()
        );
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{why}");
        }
        eprintln!("skipped: {why}");
        return;
    }
    let files: Vec<PathBuf> = manifests()
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    assert!(files.len() >= 7, "manifests found: {files:?}");
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .current_dir(deploy_dir())
            .output()
            .expect("kubernetes-validate runs");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("kubernetes-validate --strict -k {version}:\n{report}");
        assert!(
            out.status.success(),
            "validation failed for {version}:\n{report}"
        );
        for line in report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(
                CUSTOM_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("kind {k} "))),
                "a manifest was not validated ({version}): {line}"
            );
        }
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        // Files holding only custom kinds (no schema) cannot pass, only be skipped.
        let custom_only = files
            .iter()
            .filter(|f| {
                read(f)
                    .lines()
                    .filter_map(|l| l.strip_prefix("kind: "))
                    .all(|k| CUSTOM_KINDS.contains(&k.trim()))
            })
            .count();
        assert!(
            passed >= files.len() - custom_only,
            "{passed} passed of {} files ({custom_only} with custom kinds only)",
            files.len()
        );
    }
}

#[derive(Deserialize)]
struct Kustomization {
    resources: Vec<String>,
}

#[test]
fn the_kustomization_lists_every_top_level_manifest() {
    let kustomization: Kustomization =
        serde_saphyr::from_str(&read(&deploy_dir().join("kustomization.yaml")))
            .expect("kustomization.yaml parses");
    let listed: BTreeSet<String> = kustomization.resources.into_iter().collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .filter(|p| p.parent() == Some(deploy_dir().as_path()))
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}

fn daemonset() -> DaemonSet {
    serde_saphyr::from_str(&read(&deploy_dir().join("daemonset.yaml")))
        .expect("daemonset.yaml is a DaemonSet")
}

fn config_map() -> ConfigMap {
    serde_saphyr::from_str(&read(&deploy_dir().join("configmap.yaml")))
        .expect("configmap.yaml is a ConfigMap")
}

fn container<'a>(ds: &'a DaemonSet, name: &str) -> &'a Container {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container's command line as the daemon sees it: program, then args.
fn argv(c: &Container) -> Vec<String> {
    let mut argv = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    argv
}

/// For every `service-lb run` flag that reads an environment variable: env -> `--long`.
fn run_flag_envs() -> BTreeMap<String, String> {
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run subcommand");
    run.get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_owned();
            let long = a.get_long()?.to_owned();
            Some((env, long))
        })
        .collect()
}

#[test]
fn the_daemonset_command_line_parses_with_the_daemons_cli() {
    let ds = daemonset();
    let argv = argv(container(&ds, "service-lb"));
    assert!(argv[0].ends_with("/service-lb"), "{argv:?}");
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let CliCommand::Run(run) = cli.command else {
        panic!("the DaemonSet does not start `service-lb run`: {argv:?}")
    };
    for addr in [run.health_addr, run.metrics_addr] {
        assert!(
            !KUBE_PROXY_PORTS.contains(&addr.port()),
            "{addr} is kube-proxy's: the install alongside it would crash-loop"
        );
        assert_eq!(
            addr.ip(),
            std::net::IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
            "{addr}: [::] listens on both families"
        );
    }
    assert!(
        run.manifests.is_none(),
        "in a cluster the source is the API"
    );
}

#[test]
fn every_environment_variable_and_config_key_is_read_by_the_daemon() {
    let flags = run_flag_envs();
    assert!(
        flags.contains_key("SERVICE_LB_MIN_SYNC_INTERVAL"),
        "{flags:?}"
    );
    let non_flag: BTreeSet<&str> = NON_FLAG_ENV.iter().map(|(n, _)| *n).collect();
    let ds = daemonset();
    let c = container(&ds, "service-lb");

    // Explicit env entries.
    for var in c.env.as_deref().unwrap_or_default() {
        assert!(
            flags.contains_key(&var.name) || non_flag.contains(var.name.as_str()),
            "env {} is neither a `service-lb run` flag nor in NON_FLAG_ENV",
            var.name
        );
    }
    // envFrom: the whole ConfigMap becomes environment.
    let sources = c.env_from.as_deref().unwrap_or_default();
    let cm = config_map();
    let cm_name = cm.metadata.name.clone().unwrap_or_default();
    assert!(
        sources
            .iter()
            .any(|s| s.config_map_ref.as_ref().is_some_and(|r| r.name == cm_name)),
        "the DaemonSet reads ConfigMap {cm_name} with envFrom"
    );
    let data = cm.data.unwrap_or_default();
    assert!(!data.is_empty());
    for key in data.keys() {
        assert!(
            key.starts_with("SERVICE_LB_") || non_flag.contains(key.as_str()),
            "ConfigMap key {key} is not an environment variable the daemon reads"
        );
        if key.starts_with("SERVICE_LB_") {
            assert!(
                flags.contains_key(key),
                "ConfigMap key {key}: `service-lb run` has no flag with env = {key}"
            );
        }
    }
    // Keys documented in comments (to uncomment) must be real too.
    let text = read(&deploy_dir().join("configmap.yaml"));
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("# ") else {
            continue;
        };
        let Some((key, _)) = rest.split_once(": ") else {
            continue;
        };
        if key.starts_with("SERVICE_LB_") {
            assert!(
                flags.contains_key(key),
                "commented example {key} is no flag"
            );
        } else if key.starts_with("KUBERNETES_") {
            assert!(non_flag.contains(key), "commented example {key} is unknown");
        }
    }
}

#[test]
fn the_config_values_parse_with_the_daemons_flags() {
    let flags = run_flag_envs();
    let ds = daemonset();
    let mut argv = argv(container(&ds, "service-lb"));
    let on_command_line: BTreeSet<String> = argv
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect();
    for (key, value) in config_map().data.unwrap_or_default() {
        let Some(long) = flags.get(&key) else {
            continue;
        };
        assert!(
            !on_command_line.contains(long),
            "--{long} is set both in the args and in the ConfigMap ({key}): the args win \
             silently"
        );
        // What clap does with the variable, done through the flag so the process
        // environment stays untouched.
        argv.push(format!("--{long}={value}"));
    }
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}:\n{e}"));
    let CliCommand::Run(run) = cli.command else {
        panic!("not run")
    };
    let data = config_map().data.unwrap_or_default();
    let expected_sizes = data
        .get("SERVICE_LB_MAP_CT_TCP_MAX")
        .map(|v| v.parse::<u32>().expect("a number"));
    assert_eq!(Some(run.dataplane.map_ct_tcp_max), expected_sizes);
    // The base install runs alongside kube-proxy: nothing is translated at the socket
    // until the switch-over turns it on (deploy/README.md step 2).
    assert_eq!(
        run.socket_lb.socket_lb,
        service_lb::cli::socket_lb::Switch::Off,
        "the base ConfigMap turns socket LB on, yet it installs alongside kube-proxy"
    );
    assert_eq!(
        data.get("SERVICE_LB_SOCKET_LB").map(String::as_str),
        Some("off"),
        "the base ConfigMap states the socket LB setting explicitly"
    );
}

/// The switch-over turns socket LB on with exactly the ConfigMap key the base holds, and
/// the guide says so (the kube-proxy replacement must serve host-network clients).
#[test]
fn the_switch_over_turns_socket_lb_on_through_the_configmap_key() {
    let readme = read(&deploy_dir().join("README.md"));
    let step2 = readme
        .split("## 2. Switch over")
        .nth(1)
        .and_then(|rest| rest.split("## 3.").next())
        .expect("deploy/README.md has a step 2");
    assert!(
        step2.contains(r#"{"data":{"SERVICE_LB_SOCKET_LB":"on"}}"#),
        "step 2 does not turn socket LB on through the ConfigMap"
    );
    assert!(
        step2.find("SERVICE_LB_SOCKET_LB") < step2.find("cleanup-kube-proxy.yaml"),
        "socket LB must be on before kube-proxy's rules are removed"
    );
    let flags = run_flag_envs();
    assert_eq!(
        flags.get("SERVICE_LB_SOCKET_LB").map(String::as_str),
        Some("socket-lb")
    );
    assert!(config_map()
        .data
        .unwrap_or_default()
        .contains_key("SERVICE_LB_SOCKET_LB"));
}

#[test]
fn probes_ports_and_scrape_annotations_agree_with_the_flags() {
    let ds = daemonset();
    let c = container(&ds, "service-lb");
    let cli = Cli::try_parse_from(argv(c)).expect("parses");
    let CliCommand::Run(run) = cli.command else {
        panic!("not run")
    };
    let port_named = |name: &str| {
        c.ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    let health = i32::from(run.health_addr.port());
    let metrics = i32::from(run.metrics_addr.port());
    assert_eq!(port_named("health"), health);
    assert_eq!(port_named("metrics"), metrics);
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/livez"),
        (c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(health)
        );
    }
    let annotations = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&metrics.to_string())
    );
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
}

#[test]
fn the_daemonset_runs_everywhere_one_node_at_a_time() {
    let ds = daemonset();
    let spec = ds.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint"
    );
    let strategy = spec.update_strategy.as_ref().expect("update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let main = container(&ds, "service-lb");
    let security = main.security_context.as_ref().expect("security context");
    assert_ne!(
        security.privileged,
        Some(true),
        "the daemon is not privileged"
    );
    let node_name = main
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));
}

#[test]
fn the_cleanup_example_runs_a_real_subcommand() {
    let ds: DaemonSet = serde_saphyr::from_str(&read(
        &deploy_dir().join("examples/cleanup-kube-proxy.yaml"),
    ))
    .expect("a DaemonSet");
    let init = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "cleanup"))
        .expect("init container cleanup");
    let argv = argv(init);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(matches!(cli.command, CliCommand::CleanupKubeProxy(_)));
}

fn pod_spec(ds: &DaemonSet) -> &k8s_openapi::api::core::v1::PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

#[test]
fn the_daemonset_does_not_depend_on_cluster_dns_and_is_not_confined_away_from_bpf() {
    let ds = daemonset();
    let pod = pod_spec(&ds);
    // ClusterFirst* would send the API server's host name to cluster DNS, a Service that
    // only this daemon programs once kube-proxy is gone.
    assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
    let security = container(&ds, "service-lb")
        .security_context
        .as_ref()
        .expect("security context");
    let apparmor = security
        .app_armor_profile
        .as_ref()
        .expect("appArmorProfile");
    assert_eq!(apparmor.type_, "Unconfined");
    let selinux = security.se_linux_options.as_ref().expect("seLinuxOptions");
    assert_eq!(selinux.type_.as_deref(), Some("spc_t"));
    assert_eq!(
        container(&ds, "service-lb")
            .termination_message_policy
            .as_deref(),
        Some("FallbackToLogsOnError"),
        "a start-up failure's sentence shows in `kubectl describe pod`"
    );
    // Every added capability is explained in a comment right above it.
    let text = read(&deploy_dir().join("daemonset.yaml"));
    let lines: Vec<&str> = text.lines().collect();
    let caps = security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    assert!(!caps.is_empty());
    for cap in caps {
        let at = lines
            .iter()
            .position(|l| l.trim() == format!("- {cap}"))
            .unwrap_or_else(|| panic!("capability {cap} not found as a list item"));
        assert!(
            lines[at - 1].trim_start().starts_with('#')
                && lines[..at]
                    .iter()
                    .rev()
                    .take_while(|l| l.trim_start().starts_with('#'))
                    .any(|l| l.contains(&format!("CAP_{cap}"))),
            "capability {cap} has no comment saying why"
        );
    }
}

#[derive(Deserialize)]
struct Role {
    rules: Vec<RoleRule>,
}

#[derive(Deserialize)]
struct RoleRule {
    #[serde(rename = "apiGroups")]
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

/// The kinds the API source watches, read from its source (`Api::<Kind>`), as RBAC
/// resources.
fn watched_resources() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../service-lb/src/source");
    let mut files = vec![dir.join("kube_api.rs")];
    for entry in std::fs::read_dir(dir.join("kube_api")).expect("kube_api/") {
        files.push(entry.expect("entry").path());
    }
    let mut kinds = BTreeSet::new();
    for file in files {
        let text = read(&file);
        for part in text.split("Api::<").skip(1) {
            let kind: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
            kinds.insert(kind);
        }
    }
    assert!(!kinds.is_empty(), "no Api::<Kind> found");
    kinds
        .into_iter()
        .map(|kind| match kind.as_str() {
            // kind -> plural resource name.
            "EndpointSlice" => "endpointslices".to_owned(),
            "Policy" => "policies".to_owned(),
            "NetworkPolicy" => "networkpolicies".to_owned(),
            k if k.ends_with('s') => format!("{}es", k.to_lowercase()),
            k => format!("{}s", k.to_lowercase()),
        })
        .collect()
}

/// Whether the daemon emits Kubernetes Events (kube's `events::Recorder` in its source):
/// then it needs `create` and `patch` (a repeated event is a series) on
/// `events.k8s.io` events.
fn emits_events() -> bool {
    fn walk(dir: &Path, found: &mut bool) {
        for entry in std::fs::read_dir(dir).expect("readable folder").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                *found |= read(&path).contains("Recorder::new(");
            }
        }
    }
    let mut found = false;
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../service-lb/src"),
        &mut found,
    );
    found
}

#[test]
fn rbac_grants_exactly_what_the_source_watches() {
    let role: Role = serde_saphyr::from_str(&read(&deploy_dir().join("clusterrole.yaml")))
        .expect("clusterrole.yaml parses");
    let mut granted = BTreeSet::new();
    let mut events_granted = false;
    for rule in &role.rules {
        if rule.resources == ["events"] {
            assert_eq!(rule.api_groups, ["events.k8s.io"]);
            assert_eq!(rule.verbs, ["create", "patch"]);
            events_granted = true;
            continue;
        }
        assert_eq!(rule.verbs, ["list", "watch"], "{:?}", rule.resources);
        for resource in &rule.resources {
            let group = match resource.as_str() {
                "endpointslices" => "discovery.k8s.io",
                "servicecidrs" => "networking.k8s.io",
                "networkpolicies" => "networking.k8s.io",
                _ => "",
            };
            assert_eq!(rule.api_groups, [group], "{resource}");
            granted.insert(resource.clone());
        }
    }
    assert_eq!(granted, watched_resources());
    assert_eq!(
        granted,
        BTreeSet::from([
            "endpointslices".into(),
            "namespaces".into(),
            "networkpolicies".into(),
            "nodes".into(),
            "pods".into(),
            "servicecidrs".into(),
            "services".into()
        ])
    );
    assert_eq!(
        events_granted,
        emits_events(),
        "events are granted exactly when the daemon emits them"
    );
    assert!(events_granted, "the daemon emits Events (daemon/events.rs)");
}

#[test]
fn the_bpffs_init_check_mounts_only_when_it_is_not_bpffs() {
    // The init container's script, run for real in a private mount namespace
    // (`unshare --mount`) on a scratch folder standing in for /sys/fs/bpf: nothing of the
    // host's mounts changes.
    if !service_lb_tests::privileges::require_root("deploy_manifests bpffs init") {
        return;
    }
    let ds = daemonset();
    let init = pod_spec(&ds)
        .init_containers
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.name == "mount-bpffs"))
        .expect("init container mount-bpffs");
    let argv = argv(init);
    assert_eq!(&argv[..2], ["/bin/sh", "-ec"]);
    let scratch = tempfile::tempdir().expect("scratch folder");
    let dir = scratch.path().display().to_string();
    let script = argv[2].replace("/sys/fs/bpf", &dir);
    assert_ne!(script, argv[2], "the script checks /sys/fs/bpf");
    let run = |prelude: &str| {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "/bin/sh", "-ec"])
            .arg(format!("{prelude}\n{script}\nstat -f -c %T {dir}"))
            .output()
            .expect("unshare runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{prelude:?}:\n{text}");
        (out.status.success(), text)
    };
    // Not bpffs (a plain folder, even a bind mount of one): mounted, then verified.
    let (ok, text) = run(&format!("mount --bind {dir} {dir}"));
    assert!(ok, "{text}");
    assert!(text.contains("not bpffs: mounting bpffs") && text.contains("mounted bpffs"));
    assert!(text.trim_end().ends_with("bpf_fs"), "{text}");
    // Already bpffs: left alone.
    let (ok, text) = run(&format!("mount -t bpf bpf {dir}"));
    assert!(ok, "{text}");
    assert!(text.contains("bpffs already mounted"), "{text}");
    assert!(!text.contains("mounting bpffs"), "{text}");
    // The host's folder is untouched (the mounts lived in the private namespace).
    assert_ne!(
        Command::new("stat")
            .args(["-f", "-c", "%T", &dir])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default(),
        "bpf_fs"
    );
}

#[derive(Deserialize)]
struct PatchEntry {
    patch: String,
}

#[derive(Deserialize)]
struct PatchOp {
    op: String,
    path: String,
    value: serde_json::Value,
}

#[test]
fn the_documented_port_take_over_patch_moves_flags_ports_probes_and_scrape_together() {
    // The `patches:` entry of deploy/README.md's "Take over kube-proxy's ports", applied
    // (JSON patch `replace` ops, as kustomize does) to the DaemonSet.
    let readme = read(&deploy_dir().join("README.md"));
    let section = readme
        .split("### Take over kube-proxy's ports")
        .nth(1)
        .expect("the take-over section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml block");
    let entries: Vec<PatchEntry> = serde_saphyr::from_str(block).expect("a patches list");
    assert_eq!(entries.len(), 1);
    let ops: Vec<PatchOp> = serde_saphyr::from_str(&entries[0].patch).expect("JSON patch ops");
    let mut ds: serde_json::Value =
        serde_saphyr::from_str(&read(&deploy_dir().join("daemonset.yaml"))).expect("YAML");
    for op in &ops {
        assert_eq!(op.op, "replace");
        let target = ds
            .pointer_mut(&op.path)
            .unwrap_or_else(|| panic!("{} does not exist in daemonset.yaml", op.path));
        *target = op.value.clone();
    }
    let ds: DaemonSet = serde_json::from_value(ds).expect("still a DaemonSet");
    let c = container(&ds, "service-lb");
    let CliCommand::Run(run) = Cli::try_parse_from(argv(c)).expect("parses").command else {
        panic!("not run")
    };
    assert_eq!(run.metrics_addr.port(), 10249);
    assert_eq!(run.health_addr.port(), 10256);
    let port = |name: &str| {
        c.ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    assert_eq!(port("metrics"), Some(10249));
    assert_eq!(port("health"), Some(10256));
    for probe in [c.liveness_probe.as_ref(), c.readiness_probe.as_ref()] {
        let get = probe.and_then(|p| p.http_get.as_ref()).expect("httpGet");
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10256)
        );
    }
    let annotations = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        annotations.get("prometheus.io/port").map(String::as_str),
        Some("10249")
    );
}
