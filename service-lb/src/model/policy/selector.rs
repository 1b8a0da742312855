//! Label selectors (`metav1.LabelSelector`): matchLabels AND every matchExpression.
//!
//! Shared by the compiler and the reference evaluator (the one piece of logic they share
//! besides the views). An empty selector selects everything; a selector the API server
//! would reject (unknown operator, `In`/`NotIn` without values, `Exists`/`DoesNotExist`
//! with values) selects nothing, so a malformed object never opens anything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A parsed label selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    /// matchLabels and matchExpressions, ANDed (both empty: everything).
    Match(Vec<Requirement>),
    /// Rejected by API validation: matches nothing.
    Invalid,
}

/// One requirement on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// `key in (values)`; matchLabels entries are `In` with one value.
    In(String, Vec<String>),
    /// Key absent, or its value not in the list.
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// The selector that selects everything (`{}`).
    pub fn everything() -> Self {
        Self::Match(Vec::new())
    }

    pub fn of(selector: &LabelSelector) -> Self {
        let mut reqs = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            reqs.push(Requirement::In(k.clone(), vec![v.clone()]));
        }
        for e in selector.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            let req = match e.operator.as_str() {
                "In" if !values.is_empty() => Requirement::In(key, values),
                "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
                "Exists" if values.is_empty() => Requirement::Exists(key),
                "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
                _ => return Self::Invalid,
            };
            reqs.push(req);
        }
        Self::Match(reqs)
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::Invalid => false,
            Self::Match(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Exists(k) => labels.contains_key(k),
            Self::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
            }]),
        }
    }

    #[test]
    fn empty_selects_everything() {
        let s = Selector::of(&LabelSelector::default());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = Selector::of(&LabelSelector {
            match_labels: Some(labels(&[("app", "web"), ("tier", "fe")])),
            match_expressions: None,
        });
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be")])));
    }

    #[test]
    fn expressions() {
        let in_ = Selector::of(&expr("k", "In", Some(&["a", "b"])));
        assert!(in_.matches(&labels(&[("k", "b")])));
        assert!(!in_.matches(&labels(&[("k", "c")])));
        assert!(!in_.matches(&labels(&[])));
        let not_in = Selector::of(&expr("k", "NotIn", Some(&["a"])));
        assert!(not_in.matches(&labels(&[])));
        assert!(not_in.matches(&labels(&[("k", "b")])));
        assert!(!not_in.matches(&labels(&[("k", "a")])));
        let exists = Selector::of(&expr("k", "Exists", None));
        assert!(exists.matches(&labels(&[("k", "")])));
        assert!(!exists.matches(&labels(&[("j", "")])));
        let dne = Selector::of(&expr("k", "DoesNotExist", None));
        assert!(!dne.matches(&labels(&[("k", "")])));
        assert!(dne.matches(&labels(&[("j", "")])));
    }

    #[test]
    fn invalid_selectors_select_nothing() {
        for s in [
            expr("k", "In", Some(&[])),
            expr("k", "In", None),
            expr("k", "NotIn", None),
            expr("k", "Exists", Some(&["a"])),
            expr("k", "Gt", Some(&["1"])),
        ] {
            let s = Selector::of(&s);
            assert_eq!(s, Selector::Invalid);
            assert!(!s.matches(&labels(&[])));
            assert!(!s.matches(&labels(&[("k", "a")])));
        }
    }
}
