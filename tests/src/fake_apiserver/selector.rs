//! Label and field selectors as the API server understands them (the subset clients use:
//! `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`; fields by dotted path).

use std::collections::BTreeSet;

use serde_json::Value;

/// A selector that cannot be understood (the server answers 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    pub selector: String,
    pub why: &'static str,
}

impl std::fmt::Display for SelectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid selector {:?}: {}", self.selector, self.why)
    }
}

impl std::error::Error for SelectorError {}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

/// Every requirement must hold (comma = AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let fail = |why| SelectorError {
            selector: text.to_owned(),
            why,
        };
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term).ok_or_else(|| fail("unsupported term"))?);
        }
        Ok(LabelSelector(requirements))
    }

    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|requirement| match requirement {
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, set) => label(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => label(k).is_none_or(|v| !set.contains(v)),
        })
    }
}

/// Splits at commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_label_term(term: &str) -> Option<Requirement> {
    if let Some(key) = term.strip_prefix('!') {
        return valid_key(key).then(|| Requirement::NotExists(key.trim().to_owned()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return pair(key, value).map(|(k, v)| Requirement::NotEquals(k, v));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return pair(key, value).map(|(k, v)| Requirement::Equals(k, v));
    }
    if let Some((key, set)) = term.split_once(" notin ") {
        return Some(Requirement::NotIn(key.trim().to_owned(), value_set(set)?));
    }
    if let Some((key, set)) = term.split_once(" in ") {
        return Some(Requirement::In(key.trim().to_owned(), value_set(set)?));
    }
    valid_key(term).then(|| Requirement::Exists(term.to_owned()))
}

fn valid_key(key: &str) -> bool {
    let key = key.trim();
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn pair(key: &str, value: &str) -> Option<(String, String)> {
    valid_key(key).then(|| (key.trim().to_owned(), value.trim().to_owned()))
}

fn value_set(text: &str) -> Option<BTreeSet<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}

/// Field requirements by dotted JSON path (`metadata.name=n1`, `spec.nodeName!=x`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, true, v)
            } else {
                return Err(SelectorError {
                    selector: text.to_owned(),
                    why: "a field term needs = or !=",
                });
            };
            terms.push((path.trim().to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let found = path
                .split('.')
                .try_fold(object, |v, part| v.get(part))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (found == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn label_terms() {
        let other = labels(json!({"service.kubernetes.io/service-proxy-name": "x", "app": "web"}));
        let plain = labels(json!({"app": "web", "tier": "a"}));
        let not_other = LabelSelector::parse("!service.kubernetes.io/service-proxy-name").unwrap();
        assert!(!not_other.matches(Some(&other)));
        assert!(not_other.matches(Some(&plain)));
        assert!(not_other.matches(None));
        let both = LabelSelector::parse("app=web,tier in (a, b),x notin (1)").unwrap();
        assert!(both.matches(Some(&plain)));
        assert!(!both.matches(Some(&other)));
        assert!(LabelSelector::parse("app!=web").unwrap().matches(None));
        assert!(LabelSelector::parse("app").unwrap().matches(Some(&plain)));
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn field_terms() {
        let node = json!({"metadata": {"name": "n1"}});
        assert!(FieldSelector::parse("metadata.name=n1")
            .unwrap()
            .matches(&node));
        assert!(!FieldSelector::parse("metadata.name=n2")
            .unwrap()
            .matches(&node));
        assert!(FieldSelector::parse("metadata.name!=n2")
            .unwrap()
            .matches(&node));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
