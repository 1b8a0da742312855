//! The fake API server's state: objects of its collections, one global resourceVersion,
//! the change history watches resume from, open watches, and paginated list snapshots.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::selector::{FieldSelector, LabelSelector};

/// The collections the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collection {
    Services,
    EndpointSlices,
    Nodes,
    ServiceCidrs,
    Pods,
    Namespaces,
    NetworkPolicies,
}

impl Collection {
    pub fn api_version(self) -> &'static str {
        match self {
            Collection::Services | Collection::Nodes => "v1",
            Collection::Pods | Collection::Namespaces => "v1",
            Collection::EndpointSlices => "discovery.k8s.io/v1",
            Collection::ServiceCidrs => "networking.k8s.io/v1",
            Collection::NetworkPolicies => "networking.k8s.io/v1",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Collection::Services => "Service",
            Collection::EndpointSlices => "EndpointSlice",
            Collection::Nodes => "Node",
            Collection::ServiceCidrs => "ServiceCIDR",
            Collection::Pods => "Pod",
            Collection::Namespaces => "Namespace",
            Collection::NetworkPolicies => "NetworkPolicy",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Collection::Nodes | Collection::ServiceCidrs | Collection::Namespaces
        )
    }

    /// `(api prefix, plural)`: `/api/v1` + `services`.
    pub fn path(self) -> (&'static str, &'static str) {
        match self {
            Collection::Services => ("/api/v1", "services"),
            Collection::EndpointSlices => ("/apis/discovery.k8s.io/v1", "endpointslices"),
            Collection::Nodes => ("/api/v1", "nodes"),
            Collection::ServiceCidrs => ("/apis/networking.k8s.io/v1", "servicecidrs"),
            Collection::Pods => ("/api/v1", "pods"),
            Collection::Namespaces => ("/api/v1", "namespaces"),
            Collection::NetworkPolicies => ("/apis/networking.k8s.io/v1", "networkpolicies"),
        }
    }
}

/// `(namespace, name)`; the namespace is empty for Nodes.
pub type ObjectName = (String, String);

/// Which objects a list or watch wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Value) -> bool {
        let meta = object.get("metadata");
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str);
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        self.namespace
            .as_deref()
            .is_none_or(|wanted| namespace == Some(wanted))
            && self.labels.matches(labels)
            && self.fields.matches(object)
    }
}

/// One change, as kept for watches that resume from an older resourceVersion.
#[derive(Clone, Debug)]
struct Change {
    collection: Collection,
    before: Option<Value>,
    /// `None`: deleted (then `before` carries the deletion's resourceVersion).
    after: Option<Value>,
}

impl Change {
    /// The watch event line a watch with `filter` sees for this change, if any.
    fn event_for(&self, filter: &Filter) -> Option<String> {
        let was = self.before.as_ref().is_some_and(|o| filter.matches(o));
        match &self.after {
            None => self
                .before
                .as_ref()
                .filter(|_| was)
                .map(|object| event_line("DELETED", object)),
            Some(now) => match (was, filter.matches(now)) {
                (false, true) => Some(event_line("ADDED", now)),
                (true, true) => Some(event_line("MODIFIED", now)),
                // It left the selection: for this watch it is gone.
                (true, false) => Some(event_line("DELETED", now)),
                (false, false) => None,
            },
        }
    }
}

pub fn event_line(kind: &str, object: &Value) -> String {
    json!({ "type": kind, "object": object }).to_string()
}

/// An open watch: it receives whole event lines.
struct Watch {
    collection: Collection,
    filter: Filter,
    bookmarks: bool,
    lines: mpsc::UnboundedSender<String>,
}

/// The rest of a paginated list, as of the resourceVersion of its first page.
struct PendingList {
    resource_version: u64,
    items: VecDeque<Value>,
}

/// A list page.
pub struct Page {
    pub resource_version: u64,
    pub items: Vec<Value>,
    pub continue_token: Option<String>,
}

/// Answer to a watch request.
pub enum WatchStart {
    /// Stream these lines first, then whatever arrives on the receiver.
    Stream {
        first: Vec<String>,
        rest: mpsc::UnboundedReceiver<String>,
    },
    /// The resourceVersion is older than the history kept: one ERROR 410 event.
    Expired(String),
}

#[derive(Default)]
pub struct Store {
    resource_version: u64,
    objects: BTreeMap<Collection, BTreeMap<ObjectName, Value>>,
    /// Changes after `compacted`, in resourceVersion order.
    history: BTreeMap<u64, Change>,
    /// The history starts after this resourceVersion: a watch from an older one gets 410.
    compacted: u64,
    watches: Vec<Watch>,
    pending_lists: HashMap<String, PendingList>,
    next_token: u64,
    /// The server returns at most this many items per page, whatever the client asks.
    pub max_page_size: Option<usize>,
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Creates or replaces an object; returns its new resourceVersion.
    pub fn upsert(&mut self, collection: Collection, mut object: Value) -> u64 {
        let rv = self.bump();
        set_resource_version(&mut object, rv);
        let key = object_name(&object);
        let before = self
            .objects
            .entry(collection)
            .or_default()
            .insert(key, object.clone());
        self.record(
            rv,
            Change {
                collection,
                before,
                after: Some(object),
            },
        );
        rv
    }

    /// Deletes an object; `None` if there was none.
    pub fn delete(&mut self, collection: Collection, name: &ObjectName) -> Option<u64> {
        let mut gone = self.objects.get_mut(&collection)?.remove(name)?;
        let rv = self.bump();
        set_resource_version(&mut gone, rv);
        self.record(
            rv,
            Change {
                collection,
                before: Some(gone),
                after: None,
            },
        );
        Some(rv)
    }

    fn bump(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn record(&mut self, rv: u64, change: Change) {
        self.watches.retain(|watch| {
            if watch.collection != change.collection {
                return !watch.lines.is_closed();
            }
            match change.event_for(&watch.filter) {
                Some(line) => watch.lines.send(line).is_ok(),
                None => !watch.lines.is_closed(),
            }
        });
        self.history.insert(rv, change);
    }

    /// One page of a list: a new snapshot, or the next page of `continue_token`.
    pub fn list(
        &mut self,
        collection: Collection,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Option<Page> {
        let mut pending = match continue_token {
            Some(token) => self.pending_lists.remove(token)?,
            None => PendingList {
                resource_version: self.resource_version,
                items: self
                    .objects
                    .get(&collection)
                    .into_iter()
                    .flat_map(BTreeMap::values)
                    .filter(|o| filter.matches(o))
                    .cloned()
                    .collect(),
            },
        };
        let size = match (limit.filter(|l| *l > 0), self.max_page_size) {
            (Some(l), Some(m)) => l.min(m),
            (Some(l), None) => l,
            (None, Some(m)) => m,
            (None, None) => usize::MAX,
        };
        let items: Vec<Value> = (0..size).map_while(|_| pending.items.pop_front()).collect();
        let resource_version = pending.resource_version;
        let continue_token = (!pending.items.is_empty()).then(|| {
            self.next_token += 1;
            let token = format!("page-{}", self.next_token);
            self.pending_lists.insert(token.clone(), pending);
            token
        });
        Some(Page {
            resource_version,
            items,
            continue_token,
        })
    }

    /// Opens a watch of `collection` from `from` (`None`: from now; `Some(0)`: synthetic
    /// ADDED for every current object first, as for `sendInitialEvents`).
    pub fn watch(
        &mut self,
        collection: Collection,
        filter: Filter,
        from: Option<u64>,
        bookmarks: bool,
        initial_events_end: bool,
    ) -> WatchStart {
        let mut first = Vec::new();
        match from {
            Some(rv) if rv != 0 && rv < self.compacted => {
                return WatchStart::Expired(expired_line(rv, self.compacted));
            }
            Some(0) => {
                first.extend(
                    self.objects
                        .get(&collection)
                        .into_iter()
                        .flat_map(BTreeMap::values)
                        .filter(|o| filter.matches(o))
                        .map(|o| event_line("ADDED", o)),
                );
                if initial_events_end {
                    first.push(bookmark_line(
                        collection,
                        self.resource_version,
                        initial_events_end,
                    ));
                }
            }
            Some(rv) => first.extend(
                self.history
                    .range(rv + 1..)
                    .filter(|(_, change)| change.collection == collection)
                    .filter_map(|(_, change)| change.event_for(&filter)),
            ),
            None => {}
        }
        let (lines, rest) = mpsc::unbounded_channel();
        self.watches.push(Watch {
            collection,
            filter,
            bookmarks,
            lines,
        });
        WatchStart::Stream { first, rest }
    }

    /// Forgets the history: every watch from a resourceVersion before now gets 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.resource_version;
        self.pending_lists.clear();
    }

    /// Sends `line` (if any) to every open watch, then closes them all.
    pub fn close_watches(&mut self, last_line: Option<&str>) {
        for watch in self.watches.drain(..) {
            if let Some(line) = last_line {
                let _ = watch.lines.send(line.to_owned());
            }
        }
    }

    /// A BOOKMARK at the current resourceVersion to every watch that asked for bookmarks.
    pub fn send_bookmarks(&mut self) {
        let rv = self.resource_version;
        self.watches.retain(|watch| {
            !watch.bookmarks
                || watch
                    .lines
                    .send(bookmark_line(watch.collection, rv, false))
                    .is_ok()
        });
    }

    /// Watches whose client is still connected.
    pub fn open_watches(&mut self) -> usize {
        self.watches.retain(|watch| !watch.lines.is_closed());
        self.watches.len()
    }

    /// Forgets the history and ends every open watch with an ERROR 410 event.
    pub fn expire_watches(&mut self) {
        self.compact();
        let line = expired_line(self.resource_version, self.compacted);
        self.close_watches(Some(&line));
    }
}

fn set_resource_version(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

pub fn object_name(object: &Value) -> ObjectName {
    let field = |name: &str| {
        object
            .get("metadata")
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (field("namespace"), field("name"))
}

fn bookmark_line(collection: Collection, rv: u64, initial_events_end: bool) -> String {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = json!({
        "kind": collection.kind(),
        "apiVersion": collection.api_version(),
        "metadata": metadata,
    });
    event_line("BOOKMARK", &object)
}

fn expired_line(asked: u64, oldest: u64) -> String {
    event_line("ERROR", &gone_status(asked, oldest))
}

/// The Status a real API server sends for a resourceVersion that is too old.
pub fn gone_status(asked: u64, oldest: u64) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {asked} ({oldest})"),
        "reason": "Expired",
        "code": 410,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"namespace": "default", "name": name, "labels": labels}})
    }

    fn lines(start: WatchStart) -> (Vec<String>, mpsc::UnboundedReceiver<String>) {
        match start {
            WatchStart::Stream { first, rest } => (first, rest),
            WatchStart::Expired(line) => panic!("expired: {line}"),
        }
    }

    fn types(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {}",
                    v["type"].as_str().unwrap(),
                    v["object"]["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn resume_replays_changes_with_selector_transitions() {
        let mut store = Store::default();
        let filter = Filter {
            labels: LabelSelector::parse("!other").unwrap(),
            ..Filter::default()
        };
        store.upsert(Collection::Services, service("a", json!({})));
        let from = store.resource_version();
        store.upsert(Collection::Services, service("b", json!({})));
        store.upsert(Collection::Services, service("a", json!({"other": "x"})));
        store.upsert(Collection::Services, service("c", json!({"other": "x"})));
        store.delete(Collection::Services, &("default".into(), "b".into()));
        store.upsert(Collection::Nodes, json!({"metadata": {"name": "n1"}}));
        let (first, _rest) =
            lines(store.watch(Collection::Services, filter, Some(from), true, false));
        assert_eq!(types(&first), ["ADDED b", "DELETED a", "DELETED b"]);
    }

    #[test]
    fn compacted_history_expires_old_watches() {
        let mut store = Store::default();
        store.upsert(Collection::Nodes, json!({"metadata": {"name": "n1"}}));
        let before = store.resource_version();
        store.upsert(Collection::Nodes, json!({"metadata": {"name": "n1"}}));
        store.compact();
        let old = store.watch(
            Collection::Nodes,
            Filter::default(),
            Some(before),
            false,
            false,
        );
        assert!(matches!(old, WatchStart::Expired(_)));
        // Nothing was missed from the compaction point on.
        let now = store.resource_version();
        store.upsert(Collection::Nodes, json!({"metadata": {"name": "n2"}}));
        let (first, _rest) = lines(store.watch(
            Collection::Nodes,
            Filter::default(),
            Some(now),
            false,
            false,
        ));
        assert_eq!(types(&first), ["ADDED n2"]);
    }

    #[test]
    fn pages_are_a_consistent_snapshot() {
        let mut store = Store::default();
        for name in ["a", "b", "c"] {
            store.upsert(Collection::Services, service(name, json!({})));
        }
        let filter = Filter::default();
        let page = store
            .list(Collection::Services, &filter, Some(2), None)
            .unwrap();
        assert_eq!(page.items.len(), 2);
        let token = page.continue_token.unwrap();
        store.upsert(Collection::Services, service("d", json!({})));
        let rest = store
            .list(Collection::Services, &filter, Some(2), Some(&token))
            .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.resource_version, page.resource_version);
        assert!(rest.continue_token.is_none());
    }

    #[test]
    fn live_events_reach_matching_watches_only() {
        let mut store = Store::default();
        let (_, mut services) =
            lines(store.watch(Collection::Services, Filter::default(), None, false, false));
        let (_, mut nodes) =
            lines(store.watch(Collection::Nodes, Filter::default(), None, false, false));
        store.upsert(Collection::Services, service("a", json!({})));
        assert_eq!(types(&[services.try_recv().unwrap()]), ["ADDED a"]);
        assert!(nodes.try_recv().is_err());
        store.close_watches(None);
        assert!(services.try_recv().is_err());
        assert_eq!(store.open_watches(), 0);
    }
}
