//! Pure parsing of one manifests file (no I/O): multi-document YAML or JSON into typed
//! objects, with the line each document starts at.
//!
//! YAML: the file is cut into documents at `---` / `...` marker lines (a marker at column 0
//! can never be inside a scalar, so this is exact), documents with no content are skipped,
//! and each document is parsed on its own with `serde-saphyr` (linear in the file's size).
//! A document that fails is parsed again with as many blank lines in front of it as precede
//! it in the file, so the parser's positions in the message are the file's. JSON: one object,
//! or a `kind: List` whose `items` are objects.
//!
//! Kinds used: `v1` Service, `discovery.k8s.io/v1` EndpointSlice, `v1` Node,
//! `networking.k8s.io/v1` ServiceCIDR. Other kinds go
//! Kinds used: `v1` Service, `discovery.k8s.io/v1` EndpointSlice, `v1` Node, and for
//! NetworkPolicy `v1` Pod, `v1` Namespace, `networking.k8s.io/v1` NetworkPolicy (these three
//! stripped to what the policy model reads, `source::strip`). Other kinds go
//! to [`ParsedFile::ignored`]. A known kind with another `apiVersion`, a document without a
//! `kind`, or an object that does not deserialize makes the whole file an error.

use std::sync::Arc;

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
        networking::v1::ServiceCIDR,
    },
    Resource,
};

use crate::source::strip;

/// One object of a kind service-lb uses.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
    ServiceCidr(Arc<ServiceCIDR>),
    Pod(Arc<Pod>),
    Namespace(Arc<Namespace>),
    NetworkPolicy(Arc<NetworkPolicy>),
}

impl Object {
    /// A Pod, Namespace or NetworkPolicy stripped to what the policy model reads (right
    /// after parsing: the `Arc` is unique then, nothing is copied).
    fn stripped(self) -> Self {
        fn take<K: Clone + Default>(mut o: Arc<K>, f: fn(K) -> K) -> Arc<K> {
            let inner = std::mem::take(Arc::make_mut(&mut o));
            Arc::new(f(inner))
        }
        match self {
            Self::Pod(o) => Self::Pod(take(o, strip::pod)),
            Self::Namespace(o) => Self::Namespace(take(o, strip::namespace)),
            Self::NetworkPolicy(o) => Self::NetworkPolicy(take(o, strip::network_policy)),
            other => other,
        }
    }
}

/// What one file held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedFile {
    pub objects: Vec<Object>,
    /// Documents of other kinds (`kind`, line): ignored with a debug log.
    pub ignored: Vec<(String, usize)>,
}

/// A file that cannot be used: nothing of it is taken (its last good objects stay).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line where the failing document starts.
    pub line: usize,
    pub message: String,
}

/// Parses a whole file. `json` selects JSON (one object or a `List`), else YAML.
pub fn parse_file(text: &str, json: bool) -> Result<ParsedFile, ParseError> {
    if json {
        parse_json(text)
    } else {
        parse_yaml(text)
    }
}

/// The kinds service-lb reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCidr,
    Pod,
    Namespace,
    NetworkPolicy,
}

impl Kind {
    fn of(kind: &str) -> Option<Self> {
        match kind {
            k if k == Service::KIND => Some(Self::Service),
            k if k == EndpointSlice::KIND => Some(Self::EndpointSlice),
            k if k == Node::KIND => Some(Self::Node),
            k if k == ServiceCIDR::KIND => Some(Self::ServiceCidr),
            k if k == Pod::KIND => Some(Self::Pod),
            k if k == Namespace::KIND => Some(Self::Namespace),
            k if k == NetworkPolicy::KIND => Some(Self::NetworkPolicy),
            _ => None,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Service => Service::API_VERSION,
            Self::EndpointSlice => EndpointSlice::API_VERSION,
            Self::Node => Node::API_VERSION,
            Self::ServiceCidr => ServiceCIDR::API_VERSION,
            Self::Pod => Pod::API_VERSION,
            Self::Namespace => Namespace::API_VERSION,
            Self::NetworkPolicy => NetworkPolicy::API_VERSION,
        }
    }
}

/// `apiVersion` and `kind` of a document, read before the typed parse.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct TypeMeta {
    api_version: Option<String>,
    kind: Option<String>,
}

/// What to do with a document once its type is known.
enum Classified {
    Use(Kind),
    Ignore(String),
}

fn classify(meta: TypeMeta, line: usize) -> Result<Classified, ParseError> {
    let Some(kind) = meta.kind.filter(|k| !k.is_empty()) else {
        return Err(ParseError {
            line,
            message: "the document has no `kind`".into(),
        });
    };
    let Some(known) = Kind::of(&kind) else {
        return Ok(Classified::Ignore(kind));
    };
    match meta.api_version.as_deref() {
        Some(v) if v == known.api_version() => Ok(Classified::Use(known)),
        other => Err(ParseError {
            line,
            message: format!(
                "{kind}: apiVersion {} is not supported (expected {})",
                other.map_or_else(|| "(missing)".to_string(), |v| format!("'{v}'")),
                known.api_version()
            ),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// YAML

/// One document of a YAML stream: its lines, the number of lines before it in the file
/// and the line it starts at.
struct YamlDocument {
    text: String,
    lines_before: usize,
    start_line: usize,
}

impl YamlDocument {
    /// Parses the document alone (linear in its size). Only when that fails is it parsed
    /// again behind as many blank lines as precede it, so that the positions in the
    /// message are the file's (a blank line in front changes nothing else).
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ParseError> {
        serde_saphyr::from_str(&self.text).map_err(|_| {
            let mut padded = "\n".repeat(self.lines_before);
            padded.push_str(&self.text);
            match serde_saphyr::from_str::<T>(&padded) {
                Err(e) => yaml_error(self.start_line, &e),
                Ok(_) => ParseError {
                    line: self.start_line,
                    message: "the document does not parse".into(),
                },
            }
        })
    }
}

fn parse_yaml(text: &str) -> Result<ParsedFile, ParseError> {
    let mut parsed = ParsedFile::default();
    for doc in split_yaml_documents(text) {
        // One parse per document in the common case: the typed parse checks `kind` and
        // `apiVersion` itself (k8s-openapi refuses other values), so a wrong hint can
        // only fail, and a failure takes the full path with its exact error.
        if let Some(object) = doc.hinted_kind().and_then(|kind| doc.parse_as(kind).ok()) {
            parsed.objects.push(object);
            continue;
        }
        let meta: TypeMeta = doc.parse()?;
        match classify(meta, doc.start_line)? {
            Classified::Ignore(kind) => parsed.ignored.push((kind, doc.start_line)),
            Classified::Use(kind) => parsed.objects.push(doc.parse_as(kind)?),
        }
    }
    Ok(parsed)
}

impl YamlDocument {
    fn parse_as(&self, kind: Kind) -> Result<Object, ParseError> {
        Ok(match kind {
            Kind::Service => Object::Service(Arc::new(self.parse()?)),
            Kind::EndpointSlice => Object::EndpointSlice(Arc::new(self.parse()?)),
            Kind::Node => Object::Node(Arc::new(self.parse()?)),
            Kind::ServiceCidr => Object::ServiceCidr(Arc::new(self.parse()?)),
            Kind::Pod => Object::Pod(Arc::new(self.parse()?)).stripped(),
            Kind::Namespace => Object::Namespace(Arc::new(self.parse()?)).stripped(),
            Kind::NetworkPolicy => Object::NetworkPolicy(Arc::new(self.parse()?)).stripped(),
        })
    }

    /// The kind the document most likely is, from its top-level `kind:` and `apiVersion:`
    /// lines (block style, column 0, each exactly once); `None` when that is not plain.
    fn hinted_kind(&self) -> Option<Kind> {
        let mut kind = None;
        let mut api_version = None;
        for line in self.text.lines() {
            for (key, slot) in [("kind:", &mut kind), ("apiVersion:", &mut api_version)] {
                if let Some(value) = line.strip_prefix(key) {
                    if slot.replace(plain_value(value)?).is_some() {
                        return None;
                    }
                }
            }
        }
        let kind = Kind::of(kind?)?;
        (api_version? == kind.api_version()).then_some(kind)
    }
}

/// A scalar written plainly or in quotes, without a comment: `Service`, `"v1"`, `'v1'`.
fn plain_value(value: &str) -> Option<&str> {
    let value = value.trim();
    let unquoted = ['"', '\'']
        .into_iter()
        .find_map(|q| value.strip_prefix(q)?.strip_suffix(q))
        .unwrap_or(value);
    let plain = !unquoted.is_empty()
        && unquoted
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    plain.then_some(unquoted)
}

/// The parser's message on one line (its position included, without the source snippet).
fn yaml_error(line: usize, e: &serde_saphyr::Error) -> ParseError {
    let message = e.without_snippet().to_string();
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    ParseError {
        line,
        message: message.lines().collect::<Vec<_>>().join(" "),
    }
}

/// `---` or `...` at column 0, alone or followed by white space.
fn marker(line: &str) -> Option<&'static str> {
    ["---", "..."].into_iter().find(|m| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
    })
}

/// A line that carries no content: blank, a comment or a directive (`%YAML`).
fn is_blank_line(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#') || line.starts_with('%')
}

/// Cuts `text` into documents; documents with no content are left out.
fn split_yaml_documents(text: &str) -> Vec<YamlDocument> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut docs = Vec::new();
    let mut current = DocumentLines::starting_at(0);
    for (index, line) in lines.iter().enumerate() {
        match marker(line) {
            Some("---") => {
                if current.marker.is_some() || current.content.is_some() {
                    docs.extend(current.finish(&lines, index));
                    current = DocumentLines::starting_at(index);
                }
                current.marker = Some(index);
                if !is_blank_line(&line[3..]) {
                    current.content = Some(index);
                }
            }
            Some(_) => {
                // `...` ends the document; the marker line belongs to it.
                docs.extend(current.finish(&lines, index + 1));
                current = DocumentLines::starting_at(index + 1);
            }
            None => {
                if current.content.is_none() && !is_blank_line(line) {
                    current.content = Some(index);
                }
            }
        }
    }
    docs.extend(current.finish(&lines, lines.len()));
    docs
}

/// The document being cut out: 0-based line indexes.
struct DocumentLines {
    begin: usize,
    /// Its `---` line.
    marker: Option<usize>,
    /// Its first line with content.
    content: Option<usize>,
}

impl DocumentLines {
    fn starting_at(begin: usize) -> Self {
        Self {
            begin,
            marker: None,
            content: None,
        }
    }

    /// The document of lines `begin..end`, if it has content. It starts at its `---`
    /// line, else at its first line with content.
    fn finish(&self, lines: &[&str], end: usize) -> Option<YamlDocument> {
        self.content?;
        let start = self.marker.or(self.content)?;
        Some(YamlDocument {
            text: lines[self.begin..end.min(lines.len())].join("\n"),
            lines_before: self.begin,
            start_line: start + 1,
        })
    }
}

// ---------------------------------------------------------------------------------------
// JSON

fn parse_json(text: &str) -> Result<ParsedFile, ParseError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ParseError {
        line: e.line().max(1),
        message: e.to_string(),
    })?;
    let first_line = first_content_line(text);
    let mut parsed = ParsedFile::default();
    if value.get("kind").and_then(|k| k.as_str()) == Some("List") {
        let Some(serde_json::Value::Array(items)) = value.get("items").cloned() else {
            return Err(ParseError {
                line: first_line,
                message: "a List without an `items` array".into(),
            });
        };
        let lines = json_list_item_lines(text);
        for (index, item) in items.into_iter().enumerate() {
            let line = lines.get(index).copied().unwrap_or(first_line);
            add_json_object(&mut parsed, item, line).map_err(|e| ParseError {
                message: format!("items[{index}]: {}", e.message),
                ..e
            })?;
        }
    } else {
        add_json_object(&mut parsed, value, first_line)?;
    }
    Ok(parsed)
}

fn add_json_object(
    parsed: &mut ParsedFile,
    value: serde_json::Value,
    line: usize,
) -> Result<(), ParseError> {
    if !value.is_object() {
        return Err(ParseError {
            line,
            message: "expected an object".into(),
        });
    }
    let meta = TypeMeta {
        api_version: value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        kind: value
            .get("kind")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    };
    let json_error = |e: serde_json::Error| ParseError {
        line,
        message: e.to_string(),
    };
    match classify(meta, line)? {
        Classified::Ignore(kind) => parsed.ignored.push((kind, line)),
        Classified::Use(Kind::Service) => parsed.objects.push(Object::Service(Arc::new(
            serde_json::from_value(value).map_err(json_error)?,
        ))),
        Classified::Use(Kind::EndpointSlice) => parsed.objects.push(Object::EndpointSlice(
            Arc::new(serde_json::from_value(value).map_err(json_error)?),
        )),
        Classified::Use(Kind::Node) => parsed.objects.push(Object::Node(Arc::new(
            serde_json::from_value(value).map_err(json_error)?,
        ))),
        Classified::Use(Kind::ServiceCidr) => parsed.objects.push(Object::ServiceCidr(Arc::new(
            serde_json::from_value(value).map_err(json_error)?,
        ))),
        Classified::Use(Kind::Pod) => parsed.objects.push(
            Object::Pod(Arc::new(serde_json::from_value(value).map_err(json_error)?)).stripped(),
        ),
        Classified::Use(Kind::Namespace) => parsed.objects.push(
            Object::Namespace(Arc::new(serde_json::from_value(value).map_err(json_error)?))
                .stripped(),
        ),
        Classified::Use(Kind::NetworkPolicy) => parsed.objects.push(
            Object::NetworkPolicy(Arc::new(serde_json::from_value(value).map_err(json_error)?))
                .stripped(),
        ),
    }
    Ok(())
}

/// 1-based line of the first non-white-space character (1 for an empty text).
fn first_content_line(text: &str) -> usize {
    let offset = text.find(|c: char| !c.is_whitespace()).unwrap_or(0);
    line_of(text, offset)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Lines where the elements of the top-level object's `items` array start. Only called on
/// text that already parsed as JSON; returns fewer lines than items if that is not so.
fn json_list_item_lines(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // Set once the top-level key "items" was read and we wait for its array.
    let mut items_key = false;
    // Depth of the items array once inside it.
    let mut in_items = false;
    let mut expect_element = false;
    let mut lines = Vec::new();
    while i < bytes.len() {
        let b = bytes[i];
        if in_items && expect_element && !b.is_ascii_whitespace() {
            expect_element = false;
            if b != b']' {
                lines.push(line_of(text, i));
            }
        }
        match b {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1 && !in_items && &text[start..i.min(text.len())] == "items" {
                    items_key = true;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if b == b'[' && depth == 2 && items_key {
                    in_items = true;
                    expect_element = true;
                }
            }
            b'}' | b']' => {
                if in_items && depth == 2 {
                    return lines;
                }
                depth = depth.saturating_sub(1);
            }
            b',' if in_items && depth == 2 => expect_element = true,
            b',' if depth == 1 => items_key = false,
            _ => {}
        }
        i += 1;
    }
    lines
}

#[cfg(test)]
mod tests;
