//! `parse_file` on YAML streams and JSON objects/lists, good and bad.

use rstest::rstest;

use super::{parse_file, Kind, Object, ParseError, ParsedFile, YamlDocument};

fn names(parsed: &ParsedFile) -> Vec<String> {
    parsed
        .objects
        .iter()
        .map(|o| match o {
            Object::Service(s) => {
                format!("Service {}", s.metadata.name.clone().unwrap_or_default())
            }
            Object::EndpointSlice(s) => format!(
                "EndpointSlice {}",
                s.metadata.name.clone().unwrap_or_default()
            ),
            Object::Node(n) => format!("Node {}", n.metadata.name.clone().unwrap_or_default()),
            Object::ServiceCidr(c) => format!(
                "ServiceCIDR {} {:?}",
                c.metadata.name.clone().unwrap_or_default(),
                c.spec
                    .as_ref()
                    .and_then(|s| s.cidrs.clone())
                    .unwrap_or_default()
            ),
            Object::Pod(p) => format!("Pod {}", p.metadata.name.clone().unwrap_or_default()),
            Object::Namespace(n) => {
                format!("Namespace {}", n.metadata.name.clone().unwrap_or_default())
            }
            Object::NetworkPolicy(n) => format!(
                "NetworkPolicy {}",
                n.metadata.name.clone().unwrap_or_default()
            ),
        })
        .collect()
}

const MULTI_DOC: &str = "\
# a leading comment
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 198.19.0.10
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
---
# only a comment: an empty document
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: [198.18.1.2]
  conditions: {ready: true}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
---
apiVersion: v1
kind: Node
metadata:
  name: n1
...
";

#[test]
fn a_multi_document_stream_keeps_order_skips_empty_documents_and_ignores_other_kinds() {
    let parsed = parse_file(MULTI_DOC, false).unwrap();
    assert_eq!(
        names(&parsed),
        ["Service web", "EndpointSlice web-abc", "Node n1"]
    );
    assert_eq!(parsed.ignored, vec![("Deployment".to_string(), 30)]);
    let Object::Service(svc) = &parsed.objects[0] else {
        panic!("{parsed:?}")
    };
    let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!((port.port, port.name.as_deref()), (80, Some("http")));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
    );
    let Object::EndpointSlice(slice) = &parsed.objects[1] else {
        panic!()
    };
    assert_eq!(slice.endpoints[0].addresses, ["198.18.1.2"]);
    assert_eq!(
        slice.endpoints[0].conditions.as_ref().unwrap().ready,
        Some(true)
    );
}

#[rstest]
#[case::empty("", 0)]
#[case::only_comments("# nothing\n\n# here\n", 0)]
#[case::only_markers("---\n---\n...\n", 0)]
#[case::no_marker("apiVersion: v1\nkind: Node\nmetadata: {name: a}\n", 1)]
#[case::crlf("apiVersion: v1\r\nkind: Node\r\nmetadata: {name: a}\r\n---\r\napiVersion: v1\r\nkind: Node\r\nmetadata: {name: b}\r\n", 2)]
#[case::content_on_marker_line("--- {apiVersion: v1, kind: Node, metadata: {name: a}}\n", 1)]
fn document_counts(#[case] text: &str, #[case] objects: usize) {
    assert_eq!(parse_file(text, false).unwrap().objects.len(), objects);
}

#[rstest]
// The second document (its `---` on line 4) has an unclosed flow sequence.
#[case::syntax_error("apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: [b\n", 4)]
// A document without a marker starts at its first content line.
#[case::syntax_error_first_document(
    "# header\n\napiVersion: v1\nkind: Service\nspec: {ports: [}\n",
    3
)]
#[case::wrong_field_type("apiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\n# comment\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n  - port: eighty\n", 4)]
#[case::wrong_api_version("---\napiVersion: v2\nkind: Service\nmetadata: {name: web}\n", 1)]
#[case::missing_kind("---\n---\napiVersion: v1\nmetadata: {name: web}\n", 2)]
#[case::not_a_mapping("- a\n- b\n", 1)]
fn a_bad_document_fails_the_file_with_the_line_it_starts_at(
    #[case] text: &str,
    #[case] line: usize,
) {
    let err = parse_file(text, false).unwrap_err();
    assert_eq!(err.line, line, "{err}");
    assert!(!err.message.is_empty());
}

#[test]
fn a_wrong_field_type_reports_the_parsers_message_and_position() {
    let text =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n  - port: eighty\n";
    let ParseError { line, message } = parse_file(text, false).unwrap_err();
    assert_eq!(line, 1);
    assert!(
        message.contains("eighty") || message.contains("i32"),
        "{message}"
    );
    assert!(
        message.contains('6'),
        "the parser's own position (line 6): {message}"
    );
}

#[test]
fn a_json_object() {
    let text = r#"
{"apiVersion": "v1", "kind": "Service",
 "metadata": {"name": "dns", "namespace": "kube-system"},
 "spec": {"clusterIP": "198.19.0.53", "ports": [{"port": 53, "protocol": "UDP"}]}}"#;
    let parsed = parse_file(text, true).unwrap();
    assert_eq!(names(&parsed), ["Service dns"]);
    assert!(parsed.ignored.is_empty());
}

const JSON_LIST: &str = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "metadata": {"note": "items: [ignored]"},
  "items": [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}},
    {"apiVersion": "v1", "kind": "ConfigMap",
     "metadata": {"name": "x"}, "data": {"a": "]"}},
    {
      "apiVersion": "discovery.k8s.io/v1",
      "kind": "EndpointSlice",
      "metadata": {"name": "web-1"},
      "addressType": "IPv6",
      "endpoints": [{"addresses": ["fd00:18:0:1::2"]}]
    }
  ]
}"#;

#[test]
fn a_json_list_yields_its_items_with_their_lines() {
    let parsed = parse_file(JSON_LIST, true).unwrap();
    assert_eq!(names(&parsed), ["Node n1", "EndpointSlice web-1"]);
    assert_eq!(parsed.ignored, vec![("ConfigMap".to_string(), 7)]);
}

#[test]
fn a_bad_json_list_item_names_its_index_and_line() {
    let text = JSON_LIST.replace(r#""addressType": "IPv6""#, r#""addressType": 6"#);
    let err = parse_file(&text, true).unwrap_err();
    assert_eq!(err.line, 9, "{err}");
    assert!(err.message.starts_with("items[2]: "), "{err}");
}

#[rstest]
#[case::syntax("{\n  \"kind\": \"Node\",\n  \"apiVersion\" \"v1\"\n}", 3)]
#[case::truncated("{\"kind\": \"List\", \"items\": [\n", 2)]
#[case::list_without_items("\n{\"kind\": \"List\"}", 2)]
#[case::not_an_object("[1, 2]", 1)]
fn bad_json(#[case] text: &str, #[case] line: usize) {
    let err = parse_file(text, true).unwrap_err();
    assert_eq!(err.line, line, "{err}");
}

#[rstest]
#[case::plain("apiVersion: v1\nkind: Service\n", Some(Kind::Service))]
#[case::quoted(
    "kind: \"EndpointSlice\"\napiVersion: 'discovery.k8s.io/v1'\n",
    Some(Kind::EndpointSlice)
)]
#[case::other_kind("apiVersion: apps/v1\nkind: Deployment\n", None)]
#[case::other_version("apiVersion: v2\nkind: Service\n", None)]
#[case::no_version("kind: Node\n", None)]
#[case::twice("apiVersion: v1\nkind: Node\nkind: Service\n", None)]
#[case::comment("apiVersion: v1\nkind: Service # web\n", None)]
#[case::nested_only("metadata:\n  kind: Service\n  apiVersion: v1\n", None)]
#[case::flow_continuation("{apiVersion: v1,\nkind: Node,\nmetadata: {name: a}}\n", None)]
fn the_kind_hint_reads_only_plain_top_level_lines(#[case] text: &str, #[case] hint: Option<Kind>) {
    let doc = YamlDocument {
        text: text.into(),
        lines_before: 0,
        start_line: 1,
    };
    assert_eq!(doc.hinted_kind(), hint);
}

/// A hint that names the wrong kind (the typed parse refuses the document) falls back to
/// the full path: the document is still read as what it is, or fails with its own error.
#[rstest]
// The labels' `kind: Service` is nested: the hint is Node, which it is.
#[case::a_nested_kind_is_not_the_hint(
    "apiVersion: v1\nkind: Node\nmetadata: {name: a, labels: {kind: Service}}\nspec: {ports: [{port: 80}]}\n",
    Ok(vec!["Node a".to_string()])
)]
#[case::typed_parse_fails(
    "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: eighty}]}\n",
    Err(1)
)]
fn a_misleading_hint_changes_nothing(
    #[case] text: &str,
    #[case] expected: Result<Vec<String>, usize>,
) {
    match (parse_file(text, false), expected) {
        (Ok(parsed), Ok(names_expected)) => assert_eq!(names(&parsed), names_expected),
        (Err(err), Err(line)) => {
            assert_eq!(err.line, line, "{err}");
            assert!(
                err.message.contains("eighty") || err.message.contains("i32"),
                "{err}"
            );
        }
        (got, expected) => panic!("got {got:?}, expected {expected:?}"),
    }
}

#[test]
fn service_cidrs_in_yaml_and_json_and_only_networking_v1() {
    let yaml = "\
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata:
  name: kubernetes
spec:
  cidrs: [198.19.0.0/17, fd00:19::/108]
";
    let parsed = parse_file(yaml, false).unwrap();
    assert_eq!(
        names(&parsed),
        [r#"ServiceCIDR kubernetes ["198.19.0.0/17", "fd00:19::/108"]"#]
    );
    let json = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                   "metadata": {"name": "extra"}, "spec": {"cidrs": ["198.19.128.0/17"]}}"#;
    let parsed = parse_file(json, true).unwrap();
    assert_eq!(names(&parsed), [r#"ServiceCIDR extra ["198.19.128.0/17"]"#]);
    let beta = yaml.replace("networking.k8s.io/v1", "networking.k8s.io/v1beta1");
    let err = parse_file(&beta, false).unwrap_err();
    assert!(
        err.message.contains("networking.k8s.io/v1beta1"),
        "{}",
        err.message
    );
}
