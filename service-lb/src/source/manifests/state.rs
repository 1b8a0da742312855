//! What the manifests folder holds, file by file, and which object wins when two files
//! define the same one. Pure (no I/O): the watcher feeds it whole files and gets back only
//! the objects whose effective content changed, so a change to one file costs O(that file).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tracing::warn;

use super::parse::Object;

/// The kinds the folder source passes on, in the order their initial lists are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCidr,
    Pod,
    Namespace,
    NetworkPolicy,
}

impl Kind {
    pub(crate) const ALL: [Kind; 7] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ServiceCidr,
        Kind::Pod,
        Kind::Namespace,
        Kind::NetworkPolicy,
    ];

    pub(crate) fn of(object: &Object) -> Kind {
        match object {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::ServiceCidr(_) => Kind::ServiceCidr,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// Whether objects of this kind live in a namespace (Nodes and Namespaces do not).
    pub(crate) fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace | Kind::ServiceCidr)
    }
}

/// Identity of an object: kind, namespace (empty for Nodes), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjectKey {
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?} {}", self.kind, self.name)
        } else {
            write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The usable objects of one file, by identity.
pub(crate) type FileObjects = BTreeMap<ObjectKey, Object>;

/// A change the rest of the daemon must hear about.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    /// The object appeared or its effective content changed.
    Apply(Object),
    /// No file defines the object any more (carries its last content).
    Delete(Object),
}

/// Two files define the same object; `winner` (the last by file name) is the one used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Conflict {
    pub(crate) key: ObjectKey,
    pub(crate) files: Vec<PathBuf>,
}

/// Result of replacing or removing one file.
#[derive(Debug, Default)]
pub(crate) struct FileUpdate {
    /// Sorted by object identity.
    pub(crate) changes: Vec<Change>,
    /// Objects of this file that other files define too.
    pub(crate) conflicts: Vec<Conflict>,
}

/// An object as the state keeps it between reads: its JSON, a few hundred bytes where the
/// parsed value takes kilobytes (a folder of 100k Services would otherwise hold gigabytes).
/// Serialization is deterministic, so equal objects have equal bytes.
#[derive(Clone, Debug, PartialEq)]
enum Stored {
    Json(Box<[u8]>),
    /// Kept as it is if it cannot be serialized (not expected from a parsed object).
    Parsed(Object),
}

impl Stored {
    fn of(object: &Object) -> Self {
        let json = match object {
            Object::Service(o) => serde_json::to_vec(&**o),
            Object::EndpointSlice(o) => serde_json::to_vec(&**o),
            Object::Node(o) => serde_json::to_vec(&**o),
            Object::ServiceCidr(o) => serde_json::to_vec(&**o),
            Object::Pod(o) => serde_json::to_vec(&**o),
            Object::Namespace(o) => serde_json::to_vec(&**o),
            Object::NetworkPolicy(o) => serde_json::to_vec(&**o),
        };
        match json {
            Ok(bytes) => Self::Json(bytes.into_boxed_slice()),
            Err(error) => {
                warn!(%error, "cannot serialize a manifest object; keeping it parsed");
                Self::Parsed(object.clone())
            }
        }
    }

    /// The object again (`None` only if its own JSON no longer reads, which would be a bug).
    fn object(&self, kind: Kind) -> Option<Object> {
        let bytes = match self {
            Self::Parsed(object) => return Some(object.clone()),
            Self::Json(bytes) => bytes,
        };
        let object = match kind {
            Kind::Service => serde_json::from_slice(bytes).map(|o| Object::Service(Arc::new(o))),
            Kind::EndpointSlice => {
                serde_json::from_slice(bytes).map(|o| Object::EndpointSlice(Arc::new(o)))
            }
            Kind::Node => serde_json::from_slice(bytes).map(|o| Object::Node(Arc::new(o))),
            Kind::ServiceCidr => {
                serde_json::from_slice(bytes).map(|o| Object::ServiceCidr(Arc::new(o)))
            }
            Kind::Pod => serde_json::from_slice(bytes).map(|o| Object::Pod(Arc::new(o))),
            Kind::Namespace => {
                serde_json::from_slice(bytes).map(|o| Object::Namespace(Arc::new(o)))
            }
            Kind::NetworkPolicy => {
                serde_json::from_slice(bytes).map(|o| Object::NetworkPolicy(Arc::new(o)))
            }
        };
        object
            .inspect_err(|error| warn!(%error, ?kind, "cannot read back a stored manifest object"))
            .ok()
    }
}

/// Last good objects of every file, and an index of which files define which object.
#[derive(Debug, Default)]
pub(crate) struct FolderState {
    files: BTreeMap<PathBuf, BTreeMap<ObjectKey, Stored>>,
    /// Files defining each object; the last one (by path order) wins.
    owners: HashMap<ObjectKey, BTreeSet<PathBuf>>,
}

impl FolderState {
    /// Files with last good objects, in name order.
    pub(crate) fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(PathBuf::as_path)
    }

    /// The file whose version of `key` is in effect: the last by name defining it.
    fn owner(&self, key: &ObjectKey) -> Option<&PathBuf> {
        self.owners.get(key)?.last()
    }

    fn effective_stored(&self, key: &ObjectKey) -> Option<&Stored> {
        self.files.get(self.owner(key)?)?.get(key)
    }

    /// The object in effect for `key`.
    #[cfg(test)]
    pub(crate) fn effective(&self, key: &ObjectKey) -> Option<Object> {
        self.effective_stored(key)?.object(key.kind)
    }

    /// How many objects of one kind are in effect.
    pub(crate) fn count_of_kind(&self, kind: Kind) -> usize {
        self.owners.keys().filter(|k| k.kind == kind).count()
    }

    /// Every object in effect of one kind, sorted by identity.
    #[cfg(test)]
    pub(crate) fn effective_of_kind(&self, kind: Kind) -> Vec<Object> {
        let mut keys: Vec<&ObjectKey> = self.owners.keys().filter(|k| k.kind == kind).collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|key| self.effective(key))
            .collect()
    }

    /// Replaces what `file` defines with `objects` (the file's new good content).
    #[cfg(test)]
    pub(crate) fn set_file(&mut self, file: &Path, objects: FileObjects) -> FileUpdate {
        self.update(vec![(file.to_path_buf(), objects)])
    }

    /// Forgets `file` (deleted or renamed away).
    #[cfg(test)]
    pub(crate) fn remove_file(&mut self, file: &Path) -> FileUpdate {
        self.update(vec![(file.to_path_buf(), FileObjects::new())])
    }

    /// Replaces what each file defines with its new good content (empty: the file is gone)
    /// and reports the net changes of all of them together, so an object moving from one
    /// file to another (a rename) is no change at all.
    pub(crate) fn update(&mut self, files: Vec<(PathBuf, FileObjects)>) -> FileUpdate {
        let mut touched = BTreeSet::new();
        for (file, objects) in &files {
            let old_keys = self.files.get(file).into_iter().flat_map(BTreeMap::keys);
            touched.extend(old_keys.chain(objects.keys()).cloned());
        }
        let before: Vec<(ObjectKey, Option<Stored>)> = touched
            .into_iter()
            .map(|key| {
                let was = self.effective_stored(&key).cloned();
                (key, was)
            })
            .collect();
        let mut written = BTreeSet::new();
        // The objects just read, to send without reading them back.
        let mut fresh: HashMap<(PathBuf, ObjectKey), Object> = HashMap::new();
        for (file, objects) in files {
            let stored = objects
                .iter()
                .map(|(key, object)| (key.clone(), Stored::of(object)))
                .collect();
            written.extend(objects.keys().cloned());
            fresh.extend(
                objects
                    .into_iter()
                    .map(|(key, object)| ((file.clone(), key), object)),
            );
            self.replace(file, stored);
        }
        FileUpdate {
            changes: self.changes_since(before, fresh),
            conflicts: written
                .iter()
                .filter_map(|key| self.conflict(key))
                .collect(),
        }
    }

    /// Swaps one file's objects.
    fn replace(&mut self, file: PathBuf, objects: BTreeMap<ObjectKey, Stored>) {
        let old = self.files.remove(&file).unwrap_or_default();
        for key in old.keys() {
            if !objects.contains_key(key) {
                self.forget_owner(key, &file);
            }
        }
        for key in objects.keys() {
            self.owners
                .entry(key.clone())
                .or_default()
                .insert(file.clone());
        }
        if !objects.is_empty() {
            self.files.insert(file, objects);
        }
    }

    fn changes_since(
        &self,
        before: Vec<(ObjectKey, Option<Stored>)>,
        mut fresh: HashMap<(PathBuf, ObjectKey), Object>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for (key, was) in before {
            let now = self.effective_stored(&key);
            let change = match (was, now) {
                (was, Some(now)) if was.as_ref() != Some(now) => {
                    let owner = self.owner(&key).cloned().unwrap_or_default();
                    fresh
                        .remove(&(owner, key.clone()))
                        .or_else(|| now.object(key.kind))
                        .map(Change::Apply)
                }
                (Some(was), None) => was.object(key.kind).map(Change::Delete),
                _ => None,
            };
            changes.extend(change);
        }
        changes
    }

    fn forget_owner(&mut self, key: &ObjectKey, file: &Path) {
        if let Some(files) = self.owners.get_mut(key) {
            files.remove(file);
            if files.is_empty() {
                self.owners.remove(key);
            }
        }
    }

    fn conflict(&self, key: &ObjectKey) -> Option<Conflict> {
        let files = self.owners.get(key)?;
        (files.len() > 1).then(|| Conflict {
            key: key.clone(),
            files: files.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Node, Service, ServiceSpec},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn service(name: &str, cluster_ip: &str) -> (ObjectKey, Object) {
        let object = Object::Service(Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }));
        let key = ObjectKey {
            kind: Kind::Service,
            namespace: "default".into(),
            name: name.into(),
        };
        (key, object)
    }

    fn node(name: &str) -> (ObjectKey, Object) {
        let object = Object::Node(Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }));
        let key = ObjectKey {
            kind: Kind::Node,
            namespace: String::new(),
            name: name.into(),
        };
        (key, object)
    }

    fn file<'a>(objects: impl IntoIterator<Item = &'a (ObjectKey, Object)>) -> FileObjects {
        objects.into_iter().cloned().collect()
    }

    #[test]
    fn new_file_applies_each_object_once() {
        let mut state = FolderState::default();
        let (a, b) = (service("a", "198.19.0.1"), service("b", "198.19.0.2"));
        let update = state.set_file(Path::new("/m/1.yaml"), file([&a, &b]));
        assert_eq!(update.changes, vec![Change::Apply(a.1), Change::Apply(b.1)]);
        assert!(update.conflicts.is_empty());
    }

    #[test]
    fn rewrite_reports_only_what_changed() {
        let mut state = FolderState::default();
        let path = Path::new("/m/1.yaml");
        let (a, b, c) = (
            service("a", "198.19.0.1"),
            service("b", "198.19.0.2"),
            service("c", "198.19.0.3"),
        );
        state.set_file(path, file([&a, &b]));
        let b2 = service("b", "198.19.0.22");
        let update = state.set_file(path, file([&b2, &c]));
        assert_eq!(
            update.changes,
            vec![
                Change::Delete(a.1),
                Change::Apply(b2.1.clone()),
                Change::Apply(c.1.clone())
            ]
        );
        let again = state.set_file(path, file([&b2, &c]));
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }

    #[test]
    fn last_file_by_name_wins_and_the_other_takes_over_when_it_goes() {
        let mut state = FolderState::default();
        let early = service("web", "198.19.0.1");
        let late = service("web", "198.19.0.9");
        state.set_file(Path::new("/m/a.yaml"), file([&early]));
        let update = state.set_file(Path::new("/m/b.yaml"), file([&late]));
        assert_eq!(update.changes, vec![Change::Apply(late.1.clone())]);
        assert_eq!(
            update.conflicts,
            vec![Conflict {
                key: late.0.clone(),
                files: vec!["/m/a.yaml".into(), "/m/b.yaml".into()],
            }]
        );
        // A change to the losing file is invisible.
        let early2 = service("web", "198.19.0.5");
        let update = state.set_file(Path::new("/m/a.yaml"), file([&early2]));
        assert!(update.changes.is_empty(), "{:?}", update.changes);
        // The winner goes: the other file's version comes back.
        let update = state.remove_file(Path::new("/m/b.yaml"));
        assert_eq!(update.changes, vec![Change::Apply(early2.1.clone())]);
        let update = state.remove_file(Path::new("/m/a.yaml"));
        assert_eq!(update.changes, vec![Change::Delete(early2.1)]);
        assert_eq!(state.files().count(), 0);
    }

    #[test]
    fn effective_of_kind_lists_winners_sorted() {
        let mut state = FolderState::default();
        let (b, a, n) = (
            service("b", "198.19.0.2"),
            service("a", "198.19.0.1"),
            node("n1"),
        );
        state.set_file(Path::new("/m/1.yaml"), file([&b, &n]));
        state.set_file(Path::new("/m/2.yaml"), file([&a]));
        assert_eq!(state.effective_of_kind(Kind::Service), vec![a.1, b.1]);
        assert_eq!(state.effective_of_kind(Kind::Node), vec![n.1]);
        assert!(state.effective_of_kind(Kind::EndpointSlice).is_empty());
    }

    #[test]
    fn a_rename_in_one_update_is_no_change() {
        let mut state = FolderState::default();
        let a = service("a", "198.19.0.1");
        state.set_file(Path::new("/m/1.yaml"), file([&a]));
        let update = state.update(vec![
            ("/m/1.yaml".into(), FileObjects::new()),
            ("/m/2.yaml".into(), file([&a])),
        ]);
        assert!(update.changes.is_empty(), "{:?}", update.changes);
        assert!(update.conflicts.is_empty());
        assert_eq!(state.files().collect::<Vec<_>>(), [Path::new("/m/2.yaml")]);
    }

    #[test]
    fn removing_an_unknown_file_changes_nothing() {
        let mut state = FolderState::default();
        let update = state.remove_file(Path::new("/m/none.yaml"));
        assert!(update.changes.is_empty());
    }
}
