//! The files of the folder: which names count, listing them, and turning one file into its
//! usable objects (or a rejection that keeps the file's last good objects).

use std::{
    ffi::OsStr,
    fs, io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::{debug, warn};

use super::{
    parse::{self, Object},
    state::{FileObjects, Kind, ObjectKey},
};
use crate::source::Rejection;

/// Namespace of namespaced objects that do not name one (as `kubectl apply` does).
const DEFAULT_NAMESPACE: &str = "default";

/// Kubernetes ConfigMap/Secret volumes swap this symlink to publish a new version of every
/// file at once; a change to it means "re-read everything".
pub(crate) const ATOMIC_WRITER_LINK: &str = "..data";

/// True for `*.yaml`, `*.yml`, `*.json` names that are not hidden or editor temp files
/// (`.web.yaml.swp`, `web.yaml~`, `#web.yaml#`).
pub(crate) fn is_manifest_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    if name.starts_with('.') || name.starts_with('#') || name.ends_with('~') {
        return false;
    }
    manifest_format(Path::new(name)).is_some()
}

/// `Some(json)` for a manifest file name.
fn manifest_format(path: &Path) -> Option<bool> {
    match path.extension()?.to_str()? {
        "yaml" | "yml" => Some(false),
        "json" => Some(true),
        _ => None,
    }
}

/// Manifest files of `dir` (not recursive; symlinks followed), sorted by name.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !is_manifest_name(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks (ConfigMap volumes are symlinks to files).
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(_) => debug!(path = %path.display(), "not a regular file, skipped"),
            // Removed between listing and stat, or a dangling link: not there.
            Err(error) => debug!(path = %path.display(), %error, "cannot stat, skipped"),
        }
    }
    files.sort();
    Ok(files)
}

/// What reading one file gave.
#[derive(Debug)]
pub(crate) enum FileRead {
    /// The file's usable objects, and objects of it that were left out.
    Parsed {
        objects: FileObjects,
        rejected: Vec<Rejection>,
    },
    /// The file is not there (deleted, renamed away, not a regular file).
    Missing,
    /// Nothing of the file can be used; its last good objects stay.
    Rejected(Rejection),
}

/// Reads and parses one file. `node_name`: keep only the Node of that name.
pub(crate) fn read(path: &Path, node_name: Option<&str>) -> FileRead {
    let Some(json) = manifest_format(path) else {
        return FileRead::Missing;
    };
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if is_gone(&error) => return FileRead::Missing,
        Err(error) => {
            return FileRead::Rejected(Rejection {
                origin: path.display().to_string(),
                reason: "read_error",
                detail: error.to_string(),
            })
        }
    };
    let text = match String::from_utf8(text) {
        Ok(text) => text,
        Err(error) => {
            return FileRead::Rejected(Rejection {
                origin: path.display().to_string(),
                reason: "parse_error",
                detail: format!("not UTF-8: {error}"),
            })
        }
    };
    match parse::parse_file(&text, json) {
        Ok(parsed) => {
            for (kind, line) in &parsed.ignored {
                debug!(file = %path.display(), line, kind, "kind not used, ignored");
            }
            collect(path, parsed.objects, node_name)
        }
        Err(error) => FileRead::Rejected(Rejection {
            origin: format!("{}:{}", path.display(), error.line),
            reason: "parse_error",
            detail: error.message,
        }),
    }
}

/// Reads and parses `paths` (in the order given) on up to as many threads as the machine
/// has cores: parsing a big folder is the daemon's longest start-up step.
pub(crate) fn read_many(paths: &[PathBuf], node_name: Option<&str>) -> Vec<FileRead> {
    let slots: Vec<Mutex<Option<FileRead>>> = paths.iter().map(|_| Mutex::new(None)).collect();
    read_each(paths, node_name, |index, read| {
        if let Some(Ok(mut slot)) = slots.get(index).map(Mutex::lock) {
            *slot = Some(read);
        }
        true
    });
    slots
        .into_iter()
        .map(|slot| {
            let read = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            read.unwrap_or(FileRead::Missing)
        })
        .collect()
}

/// Reads and parses `paths` on up to as many threads as the machine has cores, handing
/// each file (by its index in `paths`) to `done` as soon as it is parsed, in no particular
/// order. Stops early when `done` returns false.
pub(crate) fn read_each(
    paths: &[PathBuf],
    node_name: Option<&str>,
    done: impl Fn(usize, FileRead) -> bool + Sync,
) {
    let threads = parallelism().min(paths.len());
    let next = AtomicUsize::new(0);
    let work = || loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(path) = paths.get(index) else {
            return;
        };
        if !done(index, read(path, node_name)) {
            // Nobody wants more: let the other workers stop too.
            next.store(paths.len(), Ordering::Relaxed);
            return;
        }
    };
    if threads <= 1 {
        return work();
    }
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(work);
        }
    });
}

/// How many files are parsed at once.
pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn is_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
    )
}

/// Keys the parsed objects; a nameless object is rejected on its own, a duplicate inside
/// the file is resolved in favour of the later document.
fn collect(path: &Path, parsed: Vec<Object>, node_name: Option<&str>) -> FileRead {
    let mut objects = FileObjects::new();
    let mut rejected = Vec::new();
    for mut object in parsed {
        let kind = Kind::of(&object);
        if kind.namespaced() {
            default_namespace(&mut object);
        }
        let Some(key) = key_of(&object) else {
            rejected.push(Rejection {
                origin: path.display().to_string(),
                reason: "invalid_object",
                detail: format!("a {kind:?} without metadata.name"),
            });
            continue;
        };
        if kind == Kind::Node && node_name.is_some_and(|own| own != key.name) {
            continue;
        }
        if objects.insert(key.clone(), object).is_some() {
            warn!(file = %path.display(), object = %key, "defined twice in one file; the later one is used");
        }
    }
    FileRead::Parsed { objects, rejected }
}

fn metadata_mut(object: &mut Object) -> &mut ObjectMeta {
    match object {
        // Unique right after parsing: no copy.
        Object::Service(o) => &mut Arc::make_mut(o).metadata,
        Object::EndpointSlice(o) => &mut Arc::make_mut(o).metadata,
        Object::Node(o) => &mut Arc::make_mut(o).metadata,
        Object::ServiceCidr(o) => &mut Arc::make_mut(o).metadata,
        Object::Pod(o) => &mut Arc::make_mut(o).metadata,
        Object::Namespace(o) => &mut Arc::make_mut(o).metadata,
        Object::NetworkPolicy(o) => &mut Arc::make_mut(o).metadata,
    }
}

fn metadata(object: &Object) -> &ObjectMeta {
    match object {
        Object::Service(o) => &o.metadata,
        Object::EndpointSlice(o) => &o.metadata,
        Object::Node(o) => &o.metadata,
        Object::ServiceCidr(o) => &o.metadata,
        Object::Pod(o) => &o.metadata,
        Object::Namespace(o) => &o.metadata,
        Object::NetworkPolicy(o) => &o.metadata,
    }
}

fn default_namespace(object: &mut Object) {
    let meta = metadata_mut(object);
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some(DEFAULT_NAMESPACE.into());
    }
}

/// The identity of an object; `None` without a name.
pub(crate) fn key_of(object: &Object) -> Option<ObjectKey> {
    let kind = Kind::of(object);
    let meta = metadata(object);
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let namespace = if kind.namespaced() {
        meta.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    Some(ObjectKey {
        kind,
        namespace,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names() {
        for name in ["web.yaml", "web.yml", "web.json", "a.b.yaml"] {
            assert!(is_manifest_name(OsStr::new(name)), "{name}");
        }
        for name in [
            ".web.yaml",
            ".web.yaml.swp",
            "web.yaml~",
            "#web.yaml#",
            "web.yaml.tmp",
            "web.txt",
            "yaml",
            "4913",
            "..data",
        ] {
            assert!(!is_manifest_name(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn many_files_are_read_in_the_order_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..9 {
            let path = dir.path().join(format!("n{i}.yaml"));
            let text = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n{i}}}\n");
            std::fs::write(&path, text).unwrap();
            paths.push(path);
        }
        paths.reverse();
        paths.insert(4, dir.path().join("gone.yaml"));
        let names: Vec<String> = read_many(&paths, None)
            .into_iter()
            .map(|read| match read {
                FileRead::Parsed { objects, .. } => objects
                    .keys()
                    .map(|k| k.name.clone())
                    .collect::<Vec<_>>()
                    .join(","),
                FileRead::Missing => "missing".into(),
                FileRead::Rejected(r) => format!("rejected {}", r.detail),
            })
            .collect();
        assert_eq!(
            names,
            ["n8", "n7", "n6", "n5", "missing", "n4", "n3", "n2", "n1", "n0"]
        );
    }
}
