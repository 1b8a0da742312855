//! The Helm chart (`deploy/helm/service-lb`) renders the same objects as the kustomization
//! (`deploy/`), validates like it, and its values move every place that depends on them
//! together.
//!
//! No `helm` binary is available to the tests (none is packaged for Debian, PyPI or
//! crates.io), so the chart is kept to the part of Go templates a small renderer here
//! implements exactly: `{{ .Values.a.b }}`, `{{ .Release.Namespace }}`,
//! `{{ .Chart.AppVersion }}`, `{{ if X }}`/`{{ else }}`/`{{ end }}` with Go's truthiness, and
//! the `{{-`/`-}}` whitespace trimming. Anything else in a template fails the render, so
//! the chart cannot silently outgrow what is tested here.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser as _;
use serde_json::{json, Value};
use service_lb::cli::{Cli, Command as CliCommand};

const NAMESPACE: &str = "kube-system";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn chart_dir() -> PathBuf {
    deploy_dir().join("helm/service-lb")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("YAML: {e}\n{text}"))
}

/// `.Values.a.b` in `values`; `None` when a step is missing.
fn lookup<'a>(values: &'a Value, chart: &'a Value, path: &str) -> Option<Value> {
    match path {
        ".Release.Namespace" => Some(Value::String(NAMESPACE.into())),
        ".Chart.AppVersion" => chart.get("appVersion").cloned(),
        _ => {
            let rest = path.strip_prefix(".Values.")?;
            let mut at = values;
            for step in rest.split('.') {
                at = at.get(step)?;
            }
            Some(at.clone())
        }
    }
}

/// Go templates' truthiness.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn scalar(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("{what} is not a scalar: {other}")),
    }
}

/// Renders one template (the subset described at the top of this file).
fn render(template: &str, values: &Value, chart: &Value) -> Result<String, String> {
    let mut out = String::new();
    // One entry per open `if`: (this branch is taken, an enclosing one is taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let emitting = |stack: &[(bool, bool)]| stack.iter().all(|(taken, _)| *taken);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let (text, after) = rest.split_at(open);
        let close = after.find("}}").ok_or("unclosed {{")?;
        let mut action = &after[2..close];
        rest = &after[close + 2..];
        let mut text = text.to_owned();
        if let Some(a) = action.strip_prefix('-') {
            text.truncate(text.trim_end().len());
            action = a;
        }
        if let Some(a) = action.strip_suffix('-') {
            rest = rest.trim_start();
            action = a;
        }
        if emitting(&stack) {
            out.push_str(&text);
        }
        let action = action.trim();
        let words: Vec<&str> = action.split_whitespace().collect();
        match words.as_slice() {
            ["if", path] => {
                let outer = emitting(&stack);
                let value = lookup(values, chart, path).ok_or(format!("no value {path}"))?;
                stack.push((truthy(&value), outer));
            }
            ["else"] => {
                let top = stack.last_mut().ok_or("else without if")?;
                top.0 = !top.0;
            }
            ["end"] => {
                stack.pop().ok_or("end without if")?;
            }
            [path] if path.starts_with('.') => {
                let value = lookup(values, chart, path).ok_or(format!("no value {path}"))?;
                if emitting(&stack) {
                    out.push_str(&scalar(&value, path)?);
                }
            }
            _ => return Err(format!("unsupported template action {{{{ {action} }}}}")),
        }
    }
    if !stack.is_empty() {
        return Err("an if without end".into());
    }
    if emitting(&stack) {
        out.push_str(rest);
    }
    Ok(out)
}

/// Deep merge of `overrides` into `base` (what `--set` does).
fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The chart rendered with its values and `overrides`: file name -> object.
fn render_chart(overrides: &Value) -> BTreeMap<String, Value> {
    let chart = yaml(&read(&chart_dir().join("Chart.yaml")));
    let mut values = yaml(&read(&chart_dir().join("values.yaml")));
    merge(&mut values, overrides);
    let mut objects = BTreeMap::new();
    for entry in std::fs::read_dir(chart_dir().join("templates")).expect("templates/") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = render(&read(&path), &values, &chart)
            .unwrap_or_else(|e| panic!("rendering {name}: {e}"));
        objects.insert(name, yaml(&text));
    }
    objects
}

#[derive(serde::Deserialize)]
struct Kustomization {
    namespace: String,
    resources: Vec<String>,
    images: Vec<KImage>,
    labels: Vec<KLabels>,
}

#[derive(serde::Deserialize)]
struct KImage {
    name: String,
    #[serde(rename = "newTag")]
    new_tag: String,
}

#[derive(serde::Deserialize)]
struct KLabels {
    pairs: BTreeMap<String, String>,
    #[serde(rename = "includeSelectors")]
    include_selectors: bool,
}

/// The kustomization's objects after what `kubectl apply -k` does with them: namespace on
/// namespaced objects (and ServiceAccount subjects), the image tag, the labels on each
/// object's metadata.
fn kustomized() -> BTreeMap<String, Value> {
    let k: Kustomization = serde_saphyr::from_str(&read(&deploy_dir().join("kustomization.yaml")))
        .expect("kustomization.yaml");
    let mut objects = BTreeMap::new();
    for file in &k.resources {
        let mut obj = yaml(&read(&deploy_dir().join(file)));
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        if !kind.starts_with("Cluster") {
            obj["metadata"]["namespace"] = json!(k.namespace);
        }
        if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
            for s in subjects
                .iter_mut()
                .filter(|s| s["kind"] == "ServiceAccount")
            {
                s["namespace"] = json!(k.namespace);
            }
        }
        for labels in &k.labels {
            assert!(!labels.include_selectors, "selectors are not relabelled");
            for (key, value) in &labels.pairs {
                obj["metadata"]["labels"][key] = json!(value);
            }
        }
        for list in ["initContainers", "containers"] {
            let pointer = format!("/spec/template/spec/{list}");
            if let Some(containers) = obj.pointer_mut(&pointer).and_then(Value::as_array_mut) {
                for c in containers {
                    for image in &k.images {
                        if c["image"] == json!(image.name) {
                            c["image"] = json!(format!("{}:{}", image.name, image.new_tag));
                        }
                    }
                }
            }
        }
        objects.insert(file.clone(), obj);
    }
    objects
}

#[test]
fn the_renderer_follows_go_templates() {
    let values = json!({"a": {"s": "x", "n": 0, "t": true, "e": ""}});
    let chart = json!({"appVersion": "9.9"});
    let ok = |t: &str| render(t, &values, &chart).unwrap();
    assert_eq!(ok("v={{ .Values.a.s }}"), "v=x");
    assert_eq!(
        ok("{{ .Chart.AppVersion }}/{{ .Release.Namespace }}"),
        "9.9/kube-system"
    );
    assert_eq!(
        ok("a\n  {{- if .Values.a.t }}\n  b\n  {{- end }}\nc"),
        "a\n  b\nc"
    );
    assert_eq!(
        ok("a\n  {{- if .Values.a.e }}\n  b\n  {{- end }}\nc"),
        "a\nc"
    );
    assert_eq!(ok("{{ if .Values.a.n }}1{{ else }}0{{ end }}"), "0");
    assert_eq!(ok("x {{- .Values.a.s -}} y"), "xxy");
    for bad in [
        "{{ .Values.a.missing }}",
        "{{ include \"x\" . }}",
        "{{ .Values.a.s | quote }}",
        "{{ if .Values.a.t }}open",
        "{{ end }}",
        "{{ .Values.a }}",
    ] {
        assert!(render(bad, &values, &chart).is_err(), "{bad}");
    }
}

#[test]
fn the_chart_renders_the_kustomizations_objects() {
    let rendered = render_chart(&json!({}));
    let kustomized = kustomized();
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        kustomized.keys().collect::<Vec<_>>(),
        "one template per kustomization resource, same file names"
    );
    for (file, object) in &kustomized {
        assert_eq!(
            &rendered[file], object,
            "{file}: the chart's default rendering differs from the kustomization's"
        );
    }
}

fn daemon_argv(ds: &Value) -> Vec<String> {
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    c["command"]
        .as_array()
        .into_iter()
        .chain(c["args"].as_array())
        .flatten()
        .map(|v| v.as_str().expect("string").to_owned())
        .collect()
}

#[test]
fn values_move_every_dependent_field_together() {
    let rendered = render_chart(&json!({
        "ports": {"metrics": 10249, "health": 10256},
        "apiServer": {"host": "192.0.2.10", "port": "6443"},
        "image": {"repository": "registry.example.com/service-lb", "tag": "0.2.0"},
        "config": {"externalInterfaces": "eth0", "skipFeatureCheck": true},
        "kubeProxyReplacement": true,
    }));
    let ds = &rendered["daemonset.yaml"];
    let argv = daemon_argv(ds);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let CliCommand::Run(run) = cli.command else {
        panic!("not run")
    };
    assert_eq!(run.metrics_addr.port(), 10249);
    assert_eq!(run.health_addr.port(), 10256);
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["ports"][0]["containerPort"], json!(10249));
    assert_eq!(c["ports"][1]["containerPort"], json!(10256));
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], json!(10256));
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], json!(10256));
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        json!("10249")
    );
    assert_eq!(c["image"], json!("registry.example.com/service-lb:0.2.0"));
    let init = &ds["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(
        init["image"],
        json!("registry.example.com/service-lb:0.2.0")
    );
    let data = &rendered["configmap.yaml"]["data"];
    assert_eq!(data["KUBERNETES_SERVICE_HOST"], json!("192.0.2.10"));
    assert_eq!(data["KUBERNETES_SERVICE_PORT"], json!("6443"));
    assert_eq!(data["SERVICE_LB_EXTERNAL_INTERFACES"], json!("eth0"));
    assert_eq!(data["SERVICE_LB_SKIP_FEATURE_CHECK"], json!("true"));
    assert_eq!(data["SERVICE_LB_SOCKET_LB"], json!("on"));
    // Every SERVICE_LB_* key parses with the flag that reads it.
    let flags = run_flag_envs();
    let mut argv = argv.clone();
    for (key, value) in data.as_object().expect("data") {
        if let Some(long) = flags.get(key.as_str()) {
            let value = value.as_str().expect("string value");
            if value == "true" {
                argv.push(format!("--{long}"));
            } else {
                argv.push(format!("--{long}={value}"));
            }
        } else {
            assert!(key.starts_with("KUBERNETES_"), "{key} is read by nobody");
        }
    }
    let parsed = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let CliCommand::Run(run) = parsed.command else {
        panic!("not run")
    };
    assert!(run.skip_feature_check);
    assert_eq!(
        run.socket_lb.socket_lb,
        service_lb::cli::socket_lb::Switch::On,
        "kubeProxyReplacement=true must turn socket LB on"
    );
    assert_eq!(run.interfaces.external_interfaces, ["eth0"]);
}

/// env -> long flag of `service-lb run`.
fn run_flag_envs() -> BTreeMap<String, String> {
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run");
    run.get_arguments()
        .filter_map(|a| Some((a.get_env()?.to_str()?.to_owned(), a.get_long()?.to_owned())))
        .collect()
}

fn validation_venv() -> PathBuf {
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"),
    };
    cache.join("service-lb").join("venv")
}

#[test]
fn the_rendered_chart_validates_against_the_supported_kubernetes_versions() {
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
    let dir = tempfile::tempdir().expect("scratch folder");
    let mut files = Vec::new();
    for overrides in [
        json!({}),
        json!({"apiServer": {"host": "api.example.com"}, "config": {"externalInterfaces": "eth0"}}),
    ] {
        for (name, object) in render_chart(&overrides) {
            let path = dir.path().join(format!("{}-{name}", files.len()));
            std::fs::write(&path, serde_json::to_string_pretty(&object).unwrap()).unwrap();
            files.push(path);
        }
    }
    for version in ["1.33.0", "1.34.0", "1.35.0"] {
        let out = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .expect("kubernetes-validate runs");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("kubernetes-validate --strict -k {version}:\n{report}");
        assert!(out.status.success(), "{version}:\n{report}");
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(passed, files.len(), "{report}");
    }
}
